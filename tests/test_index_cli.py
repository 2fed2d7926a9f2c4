"""`fustor find`, `du`, `ls`, `stat` and `compare` against a real fusion on 127.0.0.1,
checked against GNU find on the very tree the index was filled from."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from fustor.cli import main
from fustor.client import IndexClient, human, shown
from fustor.protocol import dumps
from tests.procs import Proc, free_port, wait_http

Q = "idx-query"
NOW = time.time()


def config(port: int) -> str:
    return f"""
host: 127.0.0.1
port: {port}
receivers:
  r: {{bind_host: 127.0.0.1, port: {port}, api_keys: [{{key: ing, pipe_id: v}},
      {{key: ka, pipe_id: fa}}, {{key: kb, pipe_id: fb}}]}}
views:
  v: {{api_keys: [{Q}], driver_params: {{max_tree_items: 40}}}}
  forest: {{driver: forest-fs, api_keys: [{Q}]}}
pipes:
  v: {{receiver: r, views: [v]}}
  fa: {{receiver: r, views: [forest]}}
  fb: {{receiver: r, views: [forest]}}
"""


def make_tree(root: Path) -> None:
    """Local files with sizes and mtimes find's tests can tell apart, and a name that is
    not UTF-8."""
    for d in range(3):
        for s in range(4):
            sub = root / f"d{d}" / f"s{s}"
            sub.mkdir(parents=True)
            for f in range(6):
                p = sub / f"f{f}.{'dat' if f % 2 else 'txt'}"
                p.write_bytes(b"x" * (f * 700))
                age = (d * 4 + s) * 600  # minutes-apart mtimes
                os.utime(p, (NOW - age, NOW - age))
    (root / "wide").mkdir()
    for i in range(55):  # more children than max_tree_items: listed page by page
        (root / "wide" / f"w{i:02d}").write_bytes(b"")
    os.utime(root / "wide", (NOW - 10, NOW - 10))
    (root / os.fsdecode(b"caf\xe9.dat")).write_bytes(b"12345")


def rows_of(root: Path) -> list[dict]:
    top = root.stat()
    out = [{"path": "/", "size": top.st_size, "modified_time": top.st_mtime,
            "created_time": top.st_ctime, "is_directory": True}]
    for dirpath, dirs, files in os.walk(root):
        for n in sorted(dirs) + sorted(files):
            p = Path(dirpath) / n
            st = p.lstat()
            out.append({"path": "/" + str(p.relative_to(root)), "size": st.st_size,
                        "modified_time": st.st_mtime, "created_time": st.st_ctime,
                        "is_directory": p.is_dir()})
    return out


def push(base: str, key: str, rows: list[dict]) -> None:
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as c:
        sid = c.post("/api/v1/pipe/session/", json={"task_id": f"t:{key}"}).json()["session_id"]
        ev = {"event_type": "update", "event_schema": "fs", "table": "files",
              "fields": list(rows[0]), "rows": rows, "index": 1, "message_source": "snapshot"}
        body = dumps({"events": [ev], "source_type": "snapshot", "is_end": True})
        r = c.post(f"/api/v1/pipe/ingest/{sid}/events", content=body,
                   headers={"content-type": "application/json"})
        assert r.status_code == 200 and not r.json().get("rejected"), r.text


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    root = tmp / "tree"
    make_tree(root)
    port = free_port()
    (tmp / "f.yaml").write_text(config(port))
    p = Proc(["fusion", "serve", "--data", str(tmp / "data"), "--config", str(tmp / "f.yaml")],
             tmp / "home", tmp / "f.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/", p)
        rows = rows_of(root)
        push(base, "ing", rows)
        push(base, "ka", rows)
        push(base, "kb", [{**r, "size": 1} if r["path"] == "/d1/s1/f3.dat" else r
                          for r in rows if not r["path"].startswith("/d2")])
        yield base, root
    finally:
        p.stop()


def fustor(base: str, *args: str, env: dict | None = None):
    return CliRunner().invoke(main, [*args, "--server", base],
                              env={"FUSTOR_KEY": Q, **(env or {})})


def gnu_find(root: Path, *args: str) -> list[bytes]:
    out = subprocess.run(["find", str(root), *args], capture_output=True, check=True).stdout
    return sorted(b"/" + ln[len(bytes(root)) + 1:] if ln != bytes(root) else b"/"
                  for ln in out.split(b"\n") if ln)


def lines(result) -> list[bytes]:
    assert result.exit_code == 0, result.output
    return [ln for ln in result.stdout_bytes.split(b"\n") if ln]


@pytest.mark.parametrize("tests", [
    (), ("-type", "f"), ("-type", "d"), ("-name", "*.dat"), ("-size", "+2k"), ("-size", "-2k"),
    ("-size", "3k"), ("-type", "f", "-size", "+1k", "-size", "-4k"), ("-mmin", "-35"),
    ("-mmin", "+35", "-name", "f1*"), ("-maxdepth", "1"), ("-maxdepth", "2", "-type", "d"),
])
def test_find_prints_what_gnu_find_prints(site, tests):
    base, root = site
    got = lines(fustor(base, "find", "v:/", *tests))
    want = gnu_find(root, *(t for t in tests if t != "-maxdepth") if "-maxdepth" not in tests
                    else gnu_find_args(tests))
    assert sorted(got) == want


def gnu_find_args(tests: tuple) -> tuple:
    # GNU find wants -maxdepth before the tests
    i = tests.index("-maxdepth")
    return tests[i:i + 2] + tests[:i] + tests[i + 2:]


def test_find_streams_in_name_order_through_pages_and_big_directories(site):
    base, root = site
    with IndexClient(base, Q, page=4) as c:  # 4 children per request; max_tree_items is 40
        got = [e.path for e in c.walk("v", "/")]
    assert len(got) == len(set(got)) == len(gnu_find(root))
    assert got[:3] == ["/", os.fsdecode(b"/caf\xe9.dat"), "/d0"]
    wide = [p for p in got if p.startswith("/wide/")]
    assert wide == sorted(wide) and len(wide) == 55
    # pre-order: every path comes after its parent and before its parent's next sibling
    index = {p: i for i, p in enumerate(got)}
    assert all(index[p.rsplit("/", 1)[0] or "/"] < index[p] for p in got if p != "/")


def test_non_utf8_names_are_printed_as_gnu_tools_print_them(site):
    base, root = site
    got = lines(fustor(base, "find", "v:/", "-name", "caf*"))
    assert got == [b"/caf\xe9.dat"] == gnu_find(root, "-name", "caf*")  # raw bytes to a pipe
    nul = fustor(base, "find", "v:/", "-name", "caf*", "-print0")
    assert nul.stdout_bytes == b"/caf\xe9.dat\0"
    as_json = json.loads(fustor(base, "find", "v:/", "-name", "caf*", "--json").stdout)
    assert as_json["path"] == "/caf\udce9.dat" and as_json["size"] == 5
    name = os.fsdecode(b"/caf\xe9.dat")
    assert shown(name, tty=True) == b"/caf?.dat"  # find and du on a terminal
    assert shown("caf\udce9.dat", tty=True, style="ls") == b"'caf'$'\\351''.dat'"  # ls
    assert shown("plain.txt", tty=True, style="ls") == b"plain.txt"
    st = fustor(base, "stat", "v:" + name)
    assert lines(st)[0] == b"  File: /caf\xe9.dat" and b"  Size: 5" in lines(st)


def test_du_sums_file_sizes_and_du_s_is_one_request(site):
    base, root = site
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    d1 = sum(p.stat().st_size for p in (root / "d1").rglob("*") if p.is_file())
    got = lines(fustor(base, "du", "-b", "v:/"))
    assert got[-1] == f"{total}\t/".encode()  # the top comes last
    assert f"{d1}\t/d1".encode() in got
    assert got.index(f"{d1}\t/d1".encode()) > got.index(
        next(ln for ln in got if ln.endswith(b"/d1/s3")))  # children before their parent
    assert lines(fustor(base, "du", "-s", "v:/d1")) == [f"{-(-d1 // 1024)}\t/d1".encode()]
    assert lines(fustor(base, "du", "-sh", "v:/")) == [f"{human(total)}\t/".encode()]
    assert [ln.split(b"\t")[1] for ln in lines(fustor(base, "du", "--max-depth", "1", "v:/"))] \
        == [b"/d0", b"/d1", b"/d2", b"/wide", b"/"]
    calls = []
    transport = httpx.HTTPTransport()
    real = transport.handle_request

    def counted(request):
        calls.append(str(request.url))
        return real(request)

    transport.handle_request = counted
    with IndexClient(base, Q, transport=transport) as c:
        [(_d, st)] = list(c.du("v", "/", all_dirs=False))
    assert st["total_size"] == total and len(calls) == 1 and "/stats?" in calls[0]
    assert (human(0), human(1023), human(1024), human(1536), human(10 * 1024 ** 2)) == \
        ("0", "1023", "1.0K", "1.5K", "10M")


def test_ls_stat_and_their_json(site):
    base, root = site
    assert lines(fustor(base, "ls", "v:/d0")) == [b"s0", b"s1", b"s2", b"s3"]
    long = lines(fustor(base, "ls", "-l", "v:/d0/s0"))
    assert len(long) == 6 and long[1].startswith(b"-            700 ") and long[1].endswith(b" f1.dat")
    assert lines(fustor(base, "ls", "v:/d0/s0/f1.dat")) == [b"/d0/s0/f1.dat"]
    assert len(lines(fustor(base, "ls", "v:/wide"))) == 55
    st = json.loads(fustor(base, "stat", "v:/d0", "--json").stdout)
    assert (st["type"], st["file_count"], st["dir_count"]) == ("d", 24, 5)
    text = fustor(base, "stat", "v:/d0").stdout
    assert "  Type: directory" in text and " Files: 24  Directories: 5" in text


def test_compare_a_forest_and_read_its_best_member(site):
    base, _root = site
    got = lines(fustor(base, "compare", "forest:/"))
    assert b"missing\t/d2\tmissing in fb" in got, got
    assert any(ln.startswith(b"subtree\t/d1\tfa=") for ln in got), got
    assert any(ln.startswith(b"size\t/d1/s1/f3.dat\tfa=2100 fb=1") for ln in got)
    as_json = [json.loads(ln) for ln in lines(fustor(base, "compare", "forest:/", "--json"))]
    assert {d["path"] for d in as_json} >= {"/d2", "/d1/s1/f3.dat"}
    # find on a forest reads the member with the most files: fa has /d2
    assert b"/d2/s0/f1.dat" in lines(fustor(base, "find", "forest:/d2", "-type", "f"))


def test_keys_come_from_the_environment_or_a_private_file(site, tmp_path):
    base, _root = site
    out = CliRunner().invoke(main, ["ls", "v:/", "--server", base], env={"FUSTOR_KEY": ""})
    assert out.exit_code == 1 and "set FUSTOR_KEY or give --key-file" in out.output
    kf = tmp_path / "key"
    kf.write_text(Q + "\n")
    kf.chmod(0o644)
    out = CliRunner().invoke(main, ["ls", "v:/", "--server", base, "--key-file", str(kf)],
                             env={"FUSTOR_KEY": ""})
    assert out.exit_code == 1 and "chmod 600" in out.output
    kf.chmod(0o600)
    out = CliRunner().invoke(main, ["ls", "v:/d0", "--server", base, "--key-file", str(kf)],
                             env={"FUSTOR_KEY": ""})
    assert out.exit_code == 0 and out.stdout.split() == ["s0", "s1", "s2", "s3"]
    wrong = fustor(base, "ls", "v:/", env={"FUSTOR_KEY": "nope"})
    assert wrong.exit_code == 1 and "Invalid or inactive X-API-Key" in wrong.output
    assert "nope" not in wrong.output.replace("Invalid or inactive", "")
    assert fustor(base, "ls", "v:/missing").exit_code == 1
    assert "give VIEW:PATH" in fustor(base, "ls", "noview").output


def test_locate_answers_from_the_name_index_on_a_view_and_a_forest(site):
    base, root = site
    got = lines(fustor(base, "locate", "v:/", "*.DAT"))
    want = [p for p in gnu_find(root, "-type", "f", "-iname", "*.dat")]
    assert sorted(got) == want
    assert [ln.rsplit(b"/", 1)[1].lower() for ln in got] == sorted(
        ln.rsplit(b"/", 1)[1].lower() for ln in got)  # in name order
    assert sorted(lines(fustor(base, "locate", "v:/d1", "f3.dat", "--exact"))) == [
        b"/d1/s%d/f3.dat" % s for s in range(4)]
    assert lines(fustor(base, "locate", "v:/", "-c", "nothing-like-it")) == [b"v\t0"]
    # a forest: fb lacks /d2 and holds /d1/s1/f3.dat with another size
    where = lines(fustor(base, "locate", "forest:/", "f3.dat", "--exact"))
    assert b"/d0/s0/f3.dat\tfa,fb" in where
    assert b"/d1/s1/f3.dat\tfa,fb\tdiffer" in where
    assert b"/d2/s3/f3.dat\tfa\tmissing in fb" in where and len(where) == 12
    assert lines(fustor(base, "locate", "forest:/", "-c", "f3.dat", "--exact")) == [
        b"fa\t12", b"fb\t8"]
    # `fustor locate VIEW PATTERN`: a bare view is the whole view
    assert lines(fustor(base, "locate", "forest", "f3.dat", "--exact")) == where
    one = json.loads(lines(fustor(base, "locate", "forest:/d1/s1", "f3*", "--json"))[0])
    assert one["members"]["fb"]["size"] == 1 and one["agree"] is False
