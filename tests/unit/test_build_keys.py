"""The build cache's key and bounds, and the request that asks for or gives products."""

from __future__ import annotations

from dataclasses import replace

import pytest

from executor.build_cache import SEEN_MAX, Build, BuildCache, build_key
from executor.config import Settings, SettingsError
from executor.languages import NODE_SNAPSHOT_MEMORY, languages, steps
from executor.models import File, Limits, RunRequest, TestCase
from executor.protocol import Product, encode_request

LANGS = languages(Settings())
LIMITS = Limits(timeout=10.0, memory_mb=512, cpus=0.5, pids=64, tmpfs_mb=100)
REQUEST = RunRequest(
    code="int main(void) { return 0; }",
    limits=LIMITS,
    language="c",
    files=(File("data.h", "#define X 1\n"),),
)
IMAGE = "sha256:" + "a" * 64


def key(request: RunRequest = REQUEST, image: str = IMAGE, lang: str = "c", rt: str = "") -> str:
    return build_key(image, rt, LANGS[lang], request)


def test_the_key_is_the_same_for_the_same_build_inputs_whatever_the_run():
    run_only = replace(
        REQUEST,
        stdin="input",
        args=("a",),
        tests=(TestCase(stdin="1"),),
        outputs=("*.txt",),
        limits=replace(LIMITS, timeout=2.0),
    )
    assert key(run_only) == key()


@pytest.mark.parametrize(
    "other",
    [
        key(replace(REQUEST, code=REQUEST.code + " ")),
        key(replace(REQUEST, files=(File("data.h", "#define X 2\n"),))),
        key(replace(REQUEST, files=(File("date.h", "#define X 1\n"),))),
        key(replace(REQUEST, files=())),
        key(replace(REQUEST, files=(*REQUEST.files, File("more.h", "")))),
        key(replace(REQUEST, limits=replace(LIMITS, memory_mb=256))),
        key(replace(REQUEST, limits=replace(LIMITS, cpus=1.0))),
        key(replace(REQUEST, limits=replace(LIMITS, pids=32))),
        key(replace(REQUEST, limits=replace(LIMITS, tmpfs_mb=50))),
        key(image="sha256:" + "b" * 64),
        key(lang="cpp"),
        key(rt="runsc"),
    ],
)
def test_any_other_build_input_is_another_key(other: str):
    assert other != key()


def test_a_file_boundary_cannot_be_moved_to_collide():
    one = replace(REQUEST, files=(File("ab", "c"),))
    two = replace(REQUEST, files=(File("a", "bc"),))
    assert key(one) != key(two)


def build(size: int) -> Build:
    return Build((Product("main", True, b"x" * size),), "", "")


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    cache = BuildCache(4000)
    cache.put("a", build(900))
    cache.put("b", build(900))
    cache.put("c", build(900))
    assert cache.get("a") is not None  # now the most recent
    cache.put("d", build(900))
    cache.put("e", build(900))  # over 4000 bytes: the least recently used (b) goes
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acde")
    assert cache.stats()["bytes"] <= 4000
    cache.put("big", build(1001))  # over a quarter of the cache: not kept
    assert cache.get("big") is None


def test_a_build_without_products_or_a_cache_turned_off_keeps_nothing():
    cache = BuildCache(4000)
    cache.put("a", Build((), "", ""))
    assert cache.get("a") is None
    off = BuildCache(0)
    off.put("a", build(1))
    assert not off.enabled and off.get("a") is None


def fields(payload: bytes) -> list[tuple[bytes, bytes]]:
    """The request's fields, in order (the runner's parser)."""
    body = payload.split(b"\n", 1)[1]
    out, at = [], 0
    while at < len(body):
        eol = body.index(b"\n", at)
        name, _, size = body[at:eol].partition(b" ")
        end = eol + 1 + int(size)
        out.append((name, body[eol + 1 : end]))
        at = end
    return out


def test_a_miss_asks_for_the_products_and_a_hit_sends_them_in_place_of_the_build():
    lang = LANGS["c"]
    asked = dict(fields(encode_request(REQUEST, lang, 1024, products_max=5000)))
    assert asked[b"product"] == b"main" and asked[b"max_products_bytes"] == b"5000"
    assert b"compile" in asked
    products = (Product("main", True, b"\x7fELF"), Product("lib/x.txt", False, b""))
    hit = fields(encode_request(REQUEST, lang, 1024, prebuilt=products))
    names = [name for name, _ in hit]
    assert b"compile" not in names and b"product" not in names
    assert [v for n, v in hit if n == b"built"] == [b"755 main", b"644 lib/x.txt"]
    assert [v for n, v in hit if n == b"built_content"] == [b"\x7fELF", b""]
    plain = [n for n, _ in fields(encode_request(REQUEST, lang, 1024))]
    assert b"product" not in plain and b"built" not in plain


def test_an_image_tag_runs_every_language_but_python_under_it():
    tagged = languages(Settings.from_env({"EXECUTOR_IMAGE_TAG": "mine"}))
    assert tagged["c"].image == "executor-c:mine"
    assert tagged["javascript"].image == "executor-javascript:mine"
    assert tagged["python"].image == Settings().python_image  # EXECUTOR_PYTHON_IMAGE's
    with pytest.raises(SettingsError, match="EXECUTOR_IMAGE_TAG"):
        Settings.from_env({"EXECUTOR_IMAGE_TAG": "a:b"})


def test_nodes_startup_snapshot_is_named_only_for_a_heap_the_images_have():
    js = LANGS["javascript"]
    default = steps(js, "console.log(1)", 512).run
    assert default == (
        "node",
        "--max-old-space-size=368",
        "--snapshot-blob=/usr/local/lib/node-snapshot/heap-368.blob",
        "main.js",
    )
    assert steps(js, "console.log(1)", 300).run == ("node", "--max-old-space-size=209", "main.js")
    assert all(memory in NODE_SNAPSHOT_MEMORY for memory in (64, 128, 256, 512, 1024, 2048))


def test_a_build_is_worth_keeping_from_its_admit_th_lookup():
    cache = BuildCache(4000, admit=2)
    assert not cache.admits("a")  # first sight: only the key is remembered
    assert not cache.admits("b")
    assert cache.admits("a")  # seen before: ask for its products
    assert cache.admits("a")  # (a put then makes it a hit; until then, still worth it)
    assert cache.admits("b")
    assert BuildCache(4000).admits("c")  # admit 1: on first sight
    assert not BuildCache(0, admit=1).admits("c")  # a cache turned off keeps nothing


def test_the_keys_remembered_for_admission_are_bounded():
    cache = BuildCache(4000, admit=2)
    for n in range(SEEN_MAX + 1):
        cache.admits(f"k{n}")
    assert not cache.admits("k0")  # the oldest was forgotten: first sight again
    assert cache.admits(f"k{SEEN_MAX}")
