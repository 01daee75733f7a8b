"""kiln's own cache of the agent (its zipapp and the controller-compiled byte code): whole or absent, and bounded."""

from __future__ import annotations

import hashlib
import json
import os

from kiln.controller.agent_build import CACHE_KEEP, store_whole


def test_the_agent_cache_keeps_the_newest_versions_whole_and_drops_the_oldest(tmp_path):
    directory = tmp_path / "agent"
    for version in range(CACHE_KEEP):  # twice the versions the cache keeps: each is two files
        data = f"agent {version}".encode()
        path = directory / f"compiled-{version:04d}.zip"
        store_whole(path, data, path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest())
        os.utime(path, (version, version))  # the order they were written in, whatever the clock's resolution
        os.utime(path.with_suffix(".sha256"), (version, version))
    kept = sorted(p.name for p in directory.iterdir())
    assert len(kept) == CACHE_KEEP, kept
    newest = directory / f"compiled-{CACHE_KEEP - 1:04d}.zip"
    assert newest.read_bytes() == f"agent {CACHE_KEEP - 1}".encode()
    assert newest.with_suffix(".sha256").read_text() == hashlib.sha256(newest.read_bytes()).hexdigest()
    assert not (directory / "compiled-0000.zip").exists(), "the oldest version was kept"
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "a temporary file was left"


def test_a_fresh_box_gets_the_agent_s_zips_as_they_are_and_inflates_only_what_it_imports():
    """The agent and its byte code travel as zips of deflated members, not compressed a second time: the box
    writes them without inflating ~2 MB first, and python inflates a module only when a run imports it. The bundle's
    entries are compressed; what the box unpacks is what the controller gave."""
    import io
    import zipfile

    from kiln.controller.agent_build import agent_zipapp
    from kiln.controller.remote import COMPILED_ENTRY, controller_compiled, fresh_payload, payload_entries

    bundle = {"role": "web", "vars": {"greeting": "hello " * 200}}
    fresh = fresh_payload(bundle, [], {"templates/index.html.j2": b"{{ greeting }}\n" * 100})
    head = fresh.payload.partition(b"\n")[0].decode()
    packed = {name: flag for name, _, flag in json.loads(head)["files"]}
    compiled = next(name for name in packed if name.startswith(COMPILED_ENTRY))
    assert packed["agent.pyz"] is False and packed[compiled] is False, packed
    assert packed["bundle/bundle.json"] is True and packed["bundle/templates/index.html.j2"] is True, packed
    with zipfile.ZipFile(io.BytesIO(controller_compiled())) as byte_code:
        assert {info.compress_type for info in byte_code.infolist()} == {zipfile.ZIP_DEFLATED}
    entries, has_bundle = payload_entries(fresh.payload)
    assert has_bundle and entries["agent.pyz"] == agent_zipapp() and entries[compiled] == controller_compiled()
    assert entries["bundle/templates/index.html.j2"] == b"{{ greeting }}\n" * 100
    assert len(fresh.payload) < len(agent_zipapp()) + len(controller_compiled()) + 2000
