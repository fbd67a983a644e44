"""Config validation: every error names the key (and the file and line it came from)."""

from __future__ import annotations

import pytest

from mmcurate.cli import main
from mmcurate.schemas.config import load_config
from mmcurate.schemas.errors import ConfigError

GOOD = """\
input:
  path: urls.parquet
  shard_size: 100
download:
  timeout_s: 5
clip:
  min_score: 0.3
"""


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_contract(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.input.shard_size == 100 and cfg.input.url_col == "url"
    assert cfg.download.allow_private_networks is False and cfg.download.max_image_pixels == 89478485
    assert cfg.dedup.phash.max_distance == 8 and cfg.clip.model == "ViT-B-32"
    assert cfg.privacy.faces.action == "blur" and cfg.export.formats == ["webdataset", "parquet"]


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = write(tmp_path, GOOD + "  colour: blue\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "clip.colour: unknown key" in str(err.value)
    assert f"{path}, line 8" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD.replace("timeout_s: 5", "timeout_s: soon")))
    assert "download.timeout_s" in str(err.value) and "'soon'" in str(err.value) and "line 5" in str(err.value)


def test_missing_input_path(tmp_path):
    with pytest.raises(ConfigError, match=r"input.path: required key is missing"):
        load_config(write(tmp_path, "input:\n  shard_size: 10\n"))


def test_bad_cidr_and_yaml_syntax(tmp_path):
    with pytest.raises(ConfigError, match=r"download.allow_networks.*not a CIDR"):
        load_config(write(tmp_path, GOOD.replace("timeout_s: 5", "allow_networks: [not-a-net]")))
    with pytest.raises(ConfigError, match=r"line \d+: not valid YAML"):
        load_config(write(tmp_path, "input: [unclosed\n"))


def test_set_overrides_by_dotted_path(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["clip.min_score=0.1", "download.allow_networks=[127.0.0.1/32]"])
    assert cfg.clip.min_score == 0.1 and cfg.download.allow_networks == ["127.0.0.1/32"]
    with pytest.raises(ConfigError, match=r"--set: clip.nope: unknown key"):
        load_config(write(tmp_path, GOOD), ["clip.nope=1"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_config(write(tmp_path, GOOD), ["clip.min_score"])


def test_cli_exits_2_with_one_message(tmp_path, capsys):
    path = write(tmp_path, GOOD + "bogus: 1\n")
    assert main(["run", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus: unknown key" in err[0] and "line 8" in err[0]
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_exits_2_on_missing_or_bad_input(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("urls.parquet", str(tmp_path / "nope.parquet")))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "r1")]) == 2
    assert "input.path" in capsys.readouterr().err
    bad = tmp_path / "urls.csv"
    bad.write_text("link,text\nhttp://x/a.jpg,hello\n")
    path = write(tmp_path, GOOD.replace("urls.parquet", str(bad)))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "input.url_col: column 'url' not in" in capsys.readouterr().err
    (tmp_path / "urls.xlsx").write_text("x")
    path = write(tmp_path, GOOD.replace("urls.parquet", str(tmp_path / "urls.xlsx")))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "r3")]) == 2
    assert "unknown format" in capsys.readouterr().err


@pytest.mark.parametrize("key, value, says", [
    ("synthesis.endpoint", "http://teacher:sk-live-123456@10.0.0.9/v1", "must not carry credentials"),
    ("synthesis.endpoint", "https://api.example.com/v1?api_key=sk-live-123456", "must not carry a query"),
    ("synthesis.judge.endpoint", "http://judge:sk-live-123456@10.0.0.9/v1", "must not carry credentials"),
    ("synthesis.judge.endpoint", "https://judge.example.com/v1#sk-live-123456", "must not carry a query"),
])
def test_a_teacher_endpoint_holding_a_secret_exits_2_without_echoing_it(tmp_path, capsys, key, value, says):
    # the endpoint is written to the manifest and every instruction record: a key in it would leak
    assert main(["run", str(write(tmp_path, GOOD)), "--run-dir", str(tmp_path / "r"), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert key in err and says in err and "sk-live-123456" not in err
    assert not (tmp_path / "r").exists()


def test_task_names_are_words_not_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"synthesis.tasks: .*letters, digits"):
        load_config(write(tmp_path, GOOD), ["synthesis.tasks=[detail, ../../etc/passwd]"])
    assert load_config(write(tmp_path, GOOD), ["synthesis.tasks=[detail, my-task_2]"]).synthesis.tasks == [
        "detail", "my-task_2"]


def test_an_unaffordable_radius_is_refused_before_anything_runs(tmp_path, capsys):
    from mmcurate.schemas.config import config_from_dict
    from mmcurate.stages.dedup.stage import DedupStage

    def check(rows: int, **phash) -> None:
        DedupStage(config_from_dict({"input": {"path": "x"}, "dedup": {"phash": phash}})).check_scale(rows)

    check(16_000_000)  # the defaults up to DataComp small (about 1.3 TB of band keys)
    with pytest.raises(ConfigError, match=r"^dedup.phash.max_distance: 8 \(with dhash_distance 8\) would move about "
                                          r"105.4 TB .* 1,280,000,000 input rows.*engine.max_shuffle_tb \(8\); "
                                          r"set max_distance \(and dhash_distance\) to 4 or less"):
        check(1_280_000_000)  # DataComp large
    check(1_280_000_000, max_distance=4, dhash_distance=4)
    # through the command line: exit 2 after the input is read, before any download or model
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\n" + "".join(f"http://127.0.0.1:9/{i}.jpg,a photo\n" for i in range(3)))
    run_dir = tmp_path / "r"
    args = ["run", str(write(tmp_path, GOOD.replace("urls.parquet", str(urls)))), "--run-dir", str(run_dir)]
    assert main([*args, "--set", "engine.max_shuffle_tb=1e-12"]) == 2
    err = capsys.readouterr().err
    assert "dedup.phash.max_distance: 8" in err and "over 3 input rows" in err and "no radius fits" in err, err
    assert not (run_dir / "stages" / "download").exists()


def test_retry_reasons_are_transient_only():
    from mmcurate.schemas.config import config_from_dict

    cfg = config_from_dict({"input": {"path": "x.csv"}, "download": {"retry_reasons": ["timeout", "http_503"]}})
    assert cfg.download.retry_reasons == ["timeout", "http_503"]
    with pytest.raises(ConfigError, match="download.retry_reasons.*'http_404' is not a transient failure"):
        config_from_dict({"input": {"path": "x.csv"}, "download": {"retry_reasons": ["http_404"]}})


def test_connect_to_is_checked_and_a_loopback_port_changes_no_run():
    from mmcurate.jobs.manifest import changed_keys
    from mmcurate.schemas.config import config_from_dict

    def cfg(port: int, **download):
        return config_from_dict({"input": {"path": "x.csv"}, "download": download,
                                 "synthesis": {"enabled": True, "endpoint": f"http://127.0.0.1:{port}/v1"}})

    with pytest.raises(ConfigError, match="download.connect_to.*'img.test:80' is not HOST:PORT:CONNECT_HOST:CONNECT_PORT"):
        cfg(1, connect_to=["img.test:80"])
    a, b = cfg(41234, connect_to=["img.test:80:127.0.0.1:41234"]), cfg(5000, connect_to=["img.test:80:127.0.0.1:5000"])
    assert a.section_hash() == b.section_hash() and changed_keys(a.resolved(), b.resolved()) == []
    # another host, or another port of a host that is not loopback, is a change
    c = config_from_dict({"input": {"path": "x.csv"}, "synthesis": {"enabled": True, "endpoint": "http://10.0.0.5:8000/v1"}})
    d = config_from_dict({"input": {"path": "x.csv"}, "synthesis": {"enabled": True, "endpoint": "http://10.0.0.5:8001/v1"}})
    assert changed_keys(c.resolved(), d.resolved()) == ["synthesis.endpoint"]
    assert changed_keys(a.resolved(), cfg(1, connect_to=["img.test:80:127.0.0.2:1"]).resolved()) == ["download.connect_to"]


def test_a_run_that_failed_its_checks_takes_the_fixed_config(tmp_path, capsys, tripwire):
    """Until a shard is done, a changed config (or input) is simply the new one: no --force."""
    bad = tmp_path / "urls.csv"
    bad.write_text("link,text\nhttp://127.0.0.1:9/a.jpg,hello\n")
    path = write(tmp_path, GOOD.replace("urls.parquet", str(bad)))
    run = ["run", str(path), "--run-dir", str(tmp_path / "r")]
    assert main(run) == 2
    assert "column 'url' not in" in capsys.readouterr().err
    # the columns fixed; the run now stops at its next check (a CLIP file that is not there)
    fixed = ["--set", "input.url_col=link", "--set", "input.caption_col=text"]
    assert main([*run, *fixed, "--set", f"clip.model=local-dir:{tmp_path / 'no-clip'}"]) == 2
    err = capsys.readouterr().err
    assert "clip.model" in err and "different config" not in err, err
    bad.write_text("link,text\nhttp://127.0.0.1:9/b.jpg,another\n")  # the input changed too: still no work done
    assert main([*run, *fixed, "--set", f"clip.model=local-dir:{tmp_path / 'other'}"]) == 2
    err = capsys.readouterr().err
    assert "clip.model" in err and "different config" not in err and "input changed" not in err, err


def test_llava_without_synthesis_and_an_address_with_no_cluster_exit_2_before_any_work(tmp_path, capsys, tripwire):
    import tempfile

    from tests.conftest import run_cli

    (tmp_path / "urls.csv").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,hello\n")
    path = write(tmp_path, GOOD.replace("urls.parquet", str(tmp_path / "urls.csv")))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "r"), "--set", "export.formats=[parquet, llava]"]) == 2
    assert "export.formats: llava holds the teacher's instruction data, and synthesis.enabled is false" in capsys.readouterr().err
    with tempfile.TemporaryDirectory(prefix="mmr-", dir="/tmp") as ray_tmp:  # no cluster Ray could find
        for address, says in (("auto", "no Ray cluster found"), ("127.0.0.1:9", "nothing answers at 127.0.0.1:9")):
            proc = run_cli("run", str(path), "--run-dir", str(tmp_path / "r"), "--address", address,
                           env={"RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": ""})
            assert proc.returncode == 2 and f"--address {address}: {says}" in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()
