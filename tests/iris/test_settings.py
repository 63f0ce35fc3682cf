"""The settings store: one check per value, stored in SQLite, readable from many threads."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from iris.errors import BadFile, BadRequest
from iris.settings import GUILD, Settings, SqliteSettings, UserSettings, banned_pattern


@pytest.fixture
def settings(tmp_path):
    s = Settings(SqliteSettings(tmp_path / "settings.sqlite3"), user_cache=2)
    s.load()
    yield s
    s.close()


def test_values_round_trip_and_survive_reopening(settings, tmp_path):
    assert settings.user("1") == UserSettings()
    assert settings.set_user("1", "steps", 40).steps == 40
    settings.set_guild("9", "banned_prompts", ["fox", r"\bwolf\b"])
    settings.set_guild("9", "imagine_channels", ["123456789012345678"])
    again = Settings(SqliteSettings(tmp_path / "settings.sqlite3"))
    again.load()
    assert again.user("1").steps == 40
    assert again.guild("9") == {
        "banned_prompts": ["fox", r"\bwolf\b"],
        "imagine_channels": ["123456789012345678"],
    }
    again.set_guild("9", "banned_prompts", None)  # a reset
    assert again.guild("9") == {"imagine_channels": ["123456789012345678"]}
    again.close()


@pytest.mark.parametrize(
    "kind,key,value,says",
    [
        ("guild", "banned_prompts", ["(open"], "not a valid regular expression"),
        ("guild", "banned_prompts", ["x" * 201], "200 characters"),
        ("guild", "banned_prompts", [str(i) for i in range(51)], "at most 50"),
        ("guild", "imagine_channels", ["12"], "channel ids"),
        ("guild", "max_queued_per_user", 101, "0 to 100"),
        ("guild", "default_labels", [" "], "at least one label"),
        ("guild", "colour", "red", "unknown setting"),
        ("user", "aspect", "round", "one of square"),
        ("user", "steps", 0, "positive"),
        ("user", "private_classify", "yes", "true or false"),
    ],
)
def test_bad_values_are_refused_and_nothing_is_stored(settings, kind, key, value, says):
    with pytest.raises(BadRequest, match=says):
        if kind == "user":
            settings.set_user("1", key, value)
        else:
            settings.set_guild("9", key, value)
    assert settings.guild("9") == {} and settings.user("1") == UserSettings()


def test_a_stored_value_that_no_longer_checks_out_falls_back_to_the_default(tmp_path):
    path = tmp_path / "settings.sqlite3"
    SqliteSettings(path).close()
    with sqlite3.connect(path) as db:  # written by hand, or by another version
        db.execute("INSERT INTO settings VALUES ('guild', '9', 'banned_prompts', '[\"(bad\"]')")
        db.execute("INSERT INTO settings VALUES ('guild', '9', 'max_queued_per_user', '3')")
        db.execute("INSERT INTO settings VALUES ('user', '1', 'aspect', '\"round\"')")
    s = Settings(SqliteSettings(path))
    s.load()
    assert s.guild("9") == {"max_queued_per_user": 3} and s.user("1").aspect is None
    s.close()


def test_user_cache_is_bounded_and_writes_are_seen_at_once(settings):
    for uid in "123":
        settings.user(uid)
    assert len(settings._users) == 2
    settings.set_user("1", "aspect", "portrait")
    assert settings.user("1").aspect == "portrait"


def test_many_threads_write_and_read_together(settings):
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                settings.set_user(str(n), "steps", i + 1)
                settings.set_guild(str(n), "max_queued_per_user", i)
                assert settings.user(str(n)).steps == i + 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert settings.backend.all(GUILD) == {str(n): {"max_queued_per_user": 19} for n in range(4)}


def test_banned_patterns_ignore_case_and_a_folder_is_no_store(tmp_path):
    assert banned_pattern("fox").search("A FOX")
    with pytest.raises(BadFile):
        SqliteSettings(tmp_path)
