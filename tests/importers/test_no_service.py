"""An import that finds no load-balanced service is LB300 at the file, never an empty spec and exit 0."""

from __future__ import annotations

import json

import pytest

from lbspec.importers import ConfigError, import_config

from importing import CONFIGS, cli


def _lb300_at(done, *paths: str) -> None:
    assert done.code == 2 and done.out == ""
    document = json.loads(done.err)
    assert document["services"] == []
    assert [(d["code"], d["span"]["file"]) for d in document["diagnostics"]] == [("LB300", p) for p in paths]


@pytest.mark.parametrize("name", ["nftables/lab-dnat.nft", "nftables/kube-proxy.nft", "nftables/lab-dnat.json",
                                  "k8s/lab-clusterip.yaml"])
def test_nginx_given_a_file_of_another_kind(name):
    """crossplane reads these as unknown directives outside any `stream` or `http` block."""
    path = str(CONFIGS / name)
    _lb300_at(cli("import", "nginx", path, "--format", "json"), path)


@pytest.mark.parametrize("kind, text", [
    ("haproxy", ""),
    ("haproxy", "global\n    maxconn 100\n\nbackend b\n    server a 10.0.1.1:80\n"),
    ("nginx", "events {}\nhttp {\n    server { listen 80; root /srv/www; }\n}\n"),
    ("nginx", "events {}\nstream {\n    upstream u { server 10.0.1.1:80; }\n}\n"),
    ("nftables", '{"nftables": [{"metainfo": {"json_schema_version": 1}}]}'),
    ("nftables", json.dumps({"nftables": [{"chain": {"family": "inet", "table": "filter", "name": "input",
                                                     "handle": 1, "type": "filter", "hook": "input", "prio": 0,
                                                     "policy": "accept"}}]})),
    ("k8s", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n"),
    ("k8s", "kind: List\nitems: []\n"),
    ("k8s", "# nothing yet\n"),
], ids=["haproxy-empty", "haproxy-backend-only", "nginx-static-files", "nginx-upstream-only", "nftables-empty",
        "nftables-filter-only", "k8s-configmap", "k8s-empty-list", "k8s-no-document"])
def test_a_configuration_without_a_service(tmp_path, kind, text):
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        import_config(kind, [str(path)])
    assert [(d.code, d.span.file) for d in raised.value.diagnostics] == [("LB300", str(path))]
    _lb300_at(cli("import", kind, str(path), "--format", "json"), str(path))


def test_each_file_without_a_service_is_named(tmp_path):
    files = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    for file in files:
        file.write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    paths = [str(f) for f in files]
    _lb300_at(cli("import", "k8s", *paths, "--format", "json"), *paths)


@pytest.mark.parametrize("kind, text", [
    ("k8s", "kind: Service\nmetadata: {name: dns}\nspec: {clusterIP: None, ports: [{port: 53}]}\n"),
    ("k8s", "kind: Service\nmetadata: {name: db}\nspec: {type: ExternalName, externalName: db.example}\n"),
    ("nginx", "events {}\nstream {\n    server { listen 10.0.0.1:80; proxy_pass $backend; }\n}\n"),
    ("nginx", "events {}\nstream {\n    server { listen unix:/run/lb.sock; proxy_pass 10.0.1.1:80; }\n}\n"),
    ("haproxy", "frontend f\n    bind unix@/run/lb.sock\n    default_backend b\n\n"
                "backend b\n    server a 10.0.1.1:80\n"),
], ids=["k8s-headless", "k8s-external-name", "nginx-variable-upstream", "nginx-unix-listen", "haproxy-unix-bind"])
def test_services_left_out_give_an_empty_spec_with_warnings(tmp_path, kind, text):
    """docs/importers.md: a service the spec cannot express is left out with an LB301, not an LB300."""
    path = tmp_path / "config"
    path.write_text(text)
    done = cli("import", kind, str(path), "--format", "json")
    assert done.code == 1
    document = json.loads(done.err)
    assert document["services"] == [] and {d["code"] for d in document["diagnostics"]} == {"LB301"}
