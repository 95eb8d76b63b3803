"""Source listing and reading: local folders, S3 prefixes (over HTTP), list files."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import SourceError, SourceItem, SourceNotFound, list_source, read_bytes


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    _touch(root / "b.jpg", b"bb")
    _touch(root / "a.PNG", b"a")
    _touch(root / "a" / "z.tif", b"zzz")
    _touch(root / "a" / "deeper" / "x.webp", b"xxxx")
    _touch(root / "a.b" / "y.jpeg", b"yy")
    _touch(root / "notes.txt", b"not an image")
    _touch(root / "a" / "README", b"no extension")
    return root


def test_local_recursive_sorted_filtered(folder):
    items = list(list_source(str(folder)))
    rel = [os.path.relpath(i.uri, folder) for i in items]
    assert rel == ["a.PNG", "a.b/y.jpeg", "a/deeper/x.webp", "a/z.tif", "b.jpg"]  # full-path order
    assert all(os.path.isabs(i.uri) for i in items)
    by_name = {os.path.basename(i.uri): i for i in items}
    assert by_name["x.webp"].size == 4
    assert by_name["x.webp"].etag_or_mtime == str(os.stat(folder / "a/deeper/x.webp").st_mtime_ns)
    everything = [os.path.relpath(i.uri, folder) for i in list_source(str(folder), filter_images=False)]
    assert "notes.txt" in everything and "a/README" in everything
    assert list(list_source(f"file://{folder}")) == items


def test_local_changes_show_in_listing(folder):
    before = {i.uri: i for i in list_source(str(folder))}
    path = folder / "b.jpg"
    path.write_bytes(b"grown!")
    os.utime(path, ns=(1, 1_700_000_000_000_000_000))
    after = {i.uri: i for i in list_source(str(folder))}
    assert after[str(path)] != before[str(path)] and after[str(path)].size == 6


def test_local_symlinks(folder, tmp_path):
    outside = _touch(tmp_path / "elsewhere" / "linked.jpg", b"12345")
    os.symlink(outside, folder / "link.jpg")  # file link: followed
    os.symlink(folder / "a", folder / "a" / "deeper" / "loop")  # directory loop
    os.symlink(tmp_path / "missing.jpg", folder / "dangling.jpg")  # broken link: skipped
    items = {os.path.relpath(i.uri, folder): i for i in list_source(str(folder))}
    assert items["link.jpg"].size == 5
    assert "dangling.jpg" not in items
    assert sum(1 for k in items if k.endswith("z.tif")) == 1  # the loop was not re-entered
    assert read_bytes(str(folder / "link.jpg")) == b"12345"


def test_single_file_and_missing(folder):
    assert list(list_source(str(folder / "b.jpg"))) == [SourceItem(str(folder / "b.jpg"), 2, str(os.stat(folder / "b.jpg").st_mtime_ns))]
    with pytest.raises(SourceNotFound, match="nowhere"):
        list(list_source(str(folder / "nowhere")))
    with pytest.raises(SourceNotFound, match="nope.jpg"):
        read_bytes(str(folder / "nope.jpg"))
    with pytest.raises(FileNotFoundError):  # SourceNotFound is one
        read_bytes(str(folder / "nope.jpg"))
    with pytest.raises(SourceError, match="directory"):
        read_bytes(str(folder))
    with pytest.raises(SourceError, match="scheme"):
        list(list_source("http://example.com/a.jpg"))


def test_txt_list_file(folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# images to process\n"
        f"{folder / 'b.jpg'}\n"
        "\n"
        "   imgs/a/z.tif   \n"  # relative to the list file
        f"file://{folder / 'a.PNG'}\n"
        f"{folder / 'b.jpg'}\n"  # duplicate: once
        "imgs/notes.txt\n"  # named explicitly: kept (decode will report it)
    )
    items = list(list_source(str(listing)))
    assert [i.uri for i in items] == [str(folder / "b.jpg"), str(folder / "a" / "z.tif"), str(folder / "a.PNG"), str(folder / "notes.txt")]
    assert items[1].size == 3
    listing.write_text(f"{folder / 'gone.jpg'}\n")
    with pytest.raises(SourceNotFound, match="gone.jpg"):
        list(list_source(str(listing)))


def test_parquet_list_file(folder, tmp_path):
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"uri": [str(folder / "a.PNG"), None, str(folder / "a.b" / "y.jpeg")], "label": [1, 2, 3]}), path)
    assert [i.uri for i in list_source(str(path))] == [str(folder / "a.PNG"), str(folder / "a.b" / "y.jpeg")]
    pq.write_table(pa.table({"path": ["x"]}), path)
    with pytest.raises(SourceError, match="no 'uri' column"):
        list(list_source(str(path)))


@pytest.fixture
def bucket(s3_bucket):
    client = s3_bucket.client()
    for key, body in {
        "photos/2024/a.jpg": b"a",
        "photos/2024/b.JPEG": b"bb",
        "photos/c.png": b"ccc",
        "photos/readme.md": b"text",
        "photos/empty-folder/": b"",
        "photos2/not-me.jpg": b"x",
        "lists/batch.txt": b"# relative and absolute entries\n../photos/c.png\ns3://%s/photos/2024/a.jpg\n" % s3_bucket.name.encode(),
    }.items():
        client.put_object(Bucket=s3_bucket.name, Key=key, Body=body)
    return s3_bucket


def test_s3_prefix_listing_paginates(bucket):
    items = list(list_source(bucket.uri("photos"), endpoint_url=bucket.endpoint_url, page_size=1))
    assert [i.uri for i in items] == [bucket.uri(k) for k in ("photos/2024/a.jpg", "photos/2024/b.JPEG", "photos/c.png")]
    head = bucket.client().head_object(Bucket=bucket.name, Key="photos/c.png")
    assert items[2] == SourceItem(bucket.uri("photos/c.png"), 3, head["ETag"].strip('"'))
    assert '"' not in items[0].etag_or_mtime
    # the endpoint can come from the environment (the fixture sets AWS_ENDPOINT_URL_S3)
    assert list(list_source(bucket.uri("photos/"))) == items
    assert len(list(list_source(bucket.uri()))) == 4  # whole bucket


def test_s3_read_and_single_object(bucket):
    assert read_bytes(bucket.uri("photos/2024/b.JPEG"), endpoint_url=bucket.endpoint_url) == b"bb"
    assert [i.size for i in list_source(bucket.uri("photos/c.png"))] == [3]
    with pytest.raises(SourceNotFound, match="photos/missing.jpg"):
        read_bytes(bucket.uri("photos/missing.jpg"))
    with pytest.raises(SourceError, match="bucket does not exist"):
        read_bytes("s3://no-such-bucket-xyz/a.jpg")


def test_s3_list_file(bucket, tmp_path):
    items = list(list_source(bucket.uri("lists/batch.txt"), endpoint_url=bucket.endpoint_url))
    assert [i.uri for i in items] == [bucket.uri("photos/c.png"), bucket.uri("photos/2024/a.jpg")]
    # a local list file may name S3 objects too
    local = tmp_path / "mixed.txt"
    local.write_text(f"{bucket.uri('photos/2024/b.JPEG')}\n")
    assert [i.size for i in list_source(str(local))] == [2]


def test_images_without_an_image_extension_are_sniffed(folder):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    _touch(folder / "camera" / "IMG_0001", png)  # no extension
    _touch(folder / "export.bin", b"\xff\xd8\xff\xe0" + b"\0" * 16)  # a JPEG named .bin
    rel = [os.path.relpath(i.uri, folder) for i in list_source(str(folder))]
    assert "camera/IMG_0001" in rel and "export.bin" in rel
    assert "notes.txt" not in rel and "a/README" not in rel  # text stays out


def test_s3_keys_without_extension_are_listed(bucket):
    bucket.client().put_object(Bucket=bucket.name, Key="photos/IMG_0002", Body=b"\x89PNG")
    uris = [i.uri for i in list_source(bucket.uri("photos"), endpoint_url=bucket.endpoint_url)]
    assert bucket.uri("photos/IMG_0002") in uris and bucket.uri("photos/readme.md") not in uris


def test_is_inside_matches_whole_components(tmp_path):
    from pipeline.sources import is_inside

    src = tmp_path / "photos"
    assert is_inside(str(src / "out" / "overlays" / "a.png"), str(src / "out"))
    assert is_inside(str(src / "out" / "a.png"), str(src / "sub" / ".." / "out") + "/")
    assert not is_inside(str(src / "out2" / "a.png"), str(src / "out"))
    assert is_inside("s3://b/p/out/x.png", "s3://b/p/out") and not is_inside("s3://b/p/out2/x.png", "s3://b/p/out")
    assert not is_inside("s3://b/p/out/x.png", str(src))
