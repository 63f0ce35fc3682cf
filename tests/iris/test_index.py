"""The image index, on SQLite and on PostgreSQL: incremental folder indexing, content-hash reuse, removal,
bad files, search."""

from __future__ import annotations

import numpy as np
import pytest

from iris.index import index_folder
from models.toy import world
from tests.pg_server import open_test_index


class CountingEmbed:
    """The toy CLIP's image encoder, counting how many images reach the model."""

    def __init__(self, clip) -> None:
        self.clip, self.images = clip, 0

    def __call__(self, images):
        self.images += len(images)
        return self.clip.encode_images(images)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "pics"
    d.mkdir()
    for i, s in enumerate(world.samples(6, seed=31)):
        s.image.save(d / f"{i}_{s.colour}_{s.shape}.png")
    return d


def test_rerun_embeds_only_new_content(toy_clip, folder, tmp_path, index_url):
    embed = CountingEmbed(toy_clip)
    with open_test_index(tmp_path, index_url) as index:
        r1 = index_folder(index, folder, embed, toy_clip.name)
        assert (r1.embedded, embed.images) == (6, 6)
        r2 = index_folder(index, folder, embed, toy_clip.name)
        assert (r2.embedded, r2.unchanged, embed.images) == (0, 6, 6)
        # a copy of an existing picture under a new name: same content, no forward pass
        (folder / "copy.png").write_bytes(sorted(folder.iterdir())[0].read_bytes())
        world.sample(999).image.save(folder / "new.png")
        r3 = index_folder(index, folder, embed, toy_clip.name)
        assert (r3.embedded, r3.reused, r3.unchanged, embed.images) == (1, 1, 6, 7)
        assert index.count(f"folder:{folder.resolve()}") == 8


def test_removed_files_leave_the_index(toy_clip, folder, tmp_path, index_url):
    with open_test_index(tmp_path, index_url) as index:
        index_folder(index, folder, CountingEmbed(toy_clip), toy_clip.name)
        victim = sorted(folder.iterdir())[0]
        victim.unlink()
        report = index_folder(index, folder, CountingEmbed(toy_clip), toy_clip.name)
        assert report.removed == 1
        q = toy_clip.encode_texts(["a red circle"])[0]
        hits = index.search(q, [f"folder:{folder.resolve()}"], toy_clip.name, k=50)
        assert victim.name not in {h.key for h in hits} and len(hits) == 5


def test_bad_files_are_counted_not_fatal(toy_clip, folder, tmp_path, index_url):
    (folder / "page.png").write_text("<html>nope</html>")
    (folder / "empty.jpg").write_bytes(b"")
    with open_test_index(tmp_path, index_url) as index:
        report = index_folder(index, folder, CountingEmbed(toy_clip), toy_clip.name)
        assert report.bad == 2 and report.embedded == 6
        assert any("page.png" in p for p in report.problems)
        again = index_folder(index, folder, CountingEmbed(toy_clip), toy_clip.name)
        assert again.bad == 2 and again.embedded == 0


def test_vectors_survive_reopen_and_model_change_reembeds(toy_clip, folder, tmp_path, index_url):
    with open_test_index(tmp_path, index_url) as index:
        index_folder(index, folder, CountingEmbed(toy_clip), toy_clip.name)
        q = toy_clip.encode_texts(["a blue square"])[0]
        before = index.search(q, [f"folder:{folder.resolve()}"], toy_clip.name, k=3)
    with open_test_index(tmp_path, index_url) as index:
        after = index.search(q, [f"folder:{folder.resolve()}"], toy_clip.name, k=3)
        assert [h.key for h in after] == [h.key for h in before]
        np.testing.assert_allclose([h.score for h in after], [h.score for h in before], atol=1e-6)
        embed = CountingEmbed(toy_clip)
        report = index_folder(index, folder, embed, "another-model")
        assert report.embedded == 6 and embed.images == 6  # a different model needs its own vectors
        assert index.search(q, ["folder:elsewhere"], toy_clip.name) == []


def test_search_sees_changes_through_the_cache(tmp_path, index_url):
    with open_test_index(tmp_path, index_url) as index:
        v = np.eye(4, dtype=np.float32)
        index.put_vectors("m", {"h0": v[0], "h1": v[1]})
        index.upsert("s", "a", "h0", {})
        assert [h.key for h in index.search(v[0], ["s"], "m")] == ["a"]
        index.upsert("s", "b", "h1", {"n": 1})
        hits = index.search(v[1], ["s"], "m")
        assert [h.key for h in hits] == ["b", "a"] and hits[0].meta == {"n": 1}
        index.remove("s", ["b"])
        assert [h.key for h in index.search(v[1], ["s"], "m")] == ["a"]


def test_a_failed_multi_statement_write_leaves_nothing(tmp_path, index_url):
    """remove_scope deletes items AND the scan state; an error between the two must undo the first."""
    from iris.index import ScanState
    from iris.sqlite import transaction

    index = open_test_index(tmp_path, index_url)
    index.upsert("s", "k", None, {}, status="bad")
    index.set_scan_state("s", ScanState(5, 1, True))
    try:
        with index._write() if index_url else transaction(index._db) as db:
            db.execute("DELETE FROM items WHERE scope = 's'")
            raise RuntimeError("disk full")
    except RuntimeError:
        pass
    assert index.items("s") and index.scan_state("s").complete
    index.close()
