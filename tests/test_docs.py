"""docs/ stays true: every `invoke` command in the guides is a real task with real flags, links
resolve, and docs/lab.svg is what `invoke host.diagram` draws of the default site today."""

import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from ruamel.yaml import YAML

from pipeline.config import load_site
from pipeline.mac import derive
from tests.conftest import REPO, invoke

DOCS = REPO / "docs"
GUIDES = [DOCS / "user-guide.md", DOCS / "concepts.md"]
# The lab from PXE to a pinged guest, and the explanation at the end: the guide walks all of it.
LAB_TASKS = {
    "pxe.build", "pxe.arm", "pxe.serve", "pxe.preseed", "pxe.status",
    "host.network", "host.storage", "host.xen", "host.check",
    "image.build", "guest.build", "host.report", "host.diagram",
}  # fmt: skip
_TASK = re.compile(r"^[a-z]+\.[a-z][a-z0-9_-]*$")


def code_lines(text: str):
    """The lines of fenced code blocks, and inline code spans, of a Markdown text."""
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        yield from block.splitlines()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    yield from re.findall(r"`([^`\n]+)`", prose)


def invoke_commands(text: str):
    """(task, [--flags]) for every `invoke ...` command, past Invoke's own -f/--config option."""
    found = []
    for line in code_lines(text):
        words = shlex.split(line.split(" #")[0], comments=False) if "invoke" in line else []
        for i, word in enumerate(words):
            if word == "invoke" or word.endswith("/invoke"):
                rest = words[i + 1 :]
                while rest and rest[0] in ("-f", "--config"):
                    rest = rest[2:]
                if rest and _TASK.match(rest[0]):
                    flags = [w.split("=")[0] for w in rest[1:] if w.startswith("--")]
                    found.append((rest[0], flags))
    return found


def guide_commands():
    commands = {}
    for path in GUIDES:
        for task, flags in invoke_commands(path.read_text()):
            commands.setdefault(task, set()).update(flags)
    return commands


def test_the_extractor_reads_commands_as_written():
    text = (
        "Run `invoke host.report --markdown r.md` or:\n\n```sh\n"
        "invoke -f site.yaml pxe.arm --mac 34:17:eb:f0:dc:e3   # comment --not-a-flag\n"
        ".venv/bin/invoke host.diagram --output=lab.png\nxl list\n```\n"
    )
    assert invoke_commands(text) == [
        ("pxe.arm", ["--mac"]),
        ("host.diagram", ["--output"]),
        ("host.report", ["--markdown"]),
    ]


def test_the_guide_walks_the_whole_lab():
    assert LAB_TASKS <= set(guide_commands()), LAB_TASKS - set(guide_commands())


@pytest.mark.parametrize("task", sorted(guide_commands()))
def test_every_guide_command_is_a_real_task_with_those_flags(task):
    # `invoke --help TASK` as the README says: `invoke TASK --help` would hand "--help" to a task
    # whose first argument is required (guest.build's NAME) as that argument's value.
    r = invoke("--help", task)
    assert r.returncode == 0, f"`invoke {task}` is in docs/ but is not a task: {r.stderr}"
    assert "Docstring:" in r.stdout
    for flag in sorted(guide_commands()[task]):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s=\[]|$)", r.stdout, re.M), (
            f"docs/ uses `invoke {task} {flag}`, which --help does not list:\n{r.stdout}"
        )


def merged(base: dict, over: dict) -> dict:
    """Invoke's merge of a -f file over invoke.yaml: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def test_the_guides_site_file_is_valid_over_the_default_site():
    """The site.yaml the guide tells people to write passes the config model, and what it
    inherits from invoke.yaml does not lock the guest to the documentation networks."""
    yaml = YAML(typ="safe")
    (block,) = re.findall(r"^```yaml\n(.*?)^```", (DOCS / "user-guide.md").read_text(), re.S | re.M)
    data = merged(yaml.load((REPO / "invoke.yaml").read_text()), yaml.load(block))
    site = load_site(data)
    guest = site.guests["guest-01"]
    assert guest.ip in site.host.subnet
    assert str(site.host.bridge_interface) == "145.100.111.1/28"
    assert all("192.0.2." not in str(net) for net in guest.ssh_allow_from)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_docs_resolve():
    for path in GUIDES + [REPO / "README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            linked = (path.parent / name) if name else path
            assert linked.is_file(), (path.name, target)
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                assert anchor in [slug(h) for h in headings], (path.name, target)


def test_readme_links_the_guides():
    readme = (REPO / "README.md").read_text()
    assert "](docs/user-guide.md)" in readme and "](docs/concepts.md)" in readme


def test_concepts_embed_the_diagram_and_state_the_derived_mac():
    concepts = (DOCS / "concepts.md").read_text()
    assert re.search(r"!\[[^\]]+\]\(lab\.svg\)", concepts)
    assert derive("guest-01") in concepts  # the MAC the text quotes is the one xenlab derives
    for answer in (
        "Dom0",
        "DomU",
        "PCI pass-through",
        "00:16:3E",
        "debootstrap",
        "rinse",
        "rpmstrap",
    ):
        assert answer in concepts


def svg_texts(svg: bytes) -> list:
    root = ET.fromstring(svg)
    return sorted(t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.text)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed (./setup)")
def test_lab_svg_is_what_host_diagram_draws_of_the_default_site(tmp_path):
    """docs/make-diagram.sh rebuilds the default site in namespaces and draws it: the .dot must
    be the committed one, and the committed SVG must carry the same labels (Graphviz's layout
    may differ between versions, the text may not). Run the script to refresh docs/."""
    run = subprocess.run(
        [str(DOCS / "make-diagram.sh"), str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    fresh = (tmp_path / "lab.dot").read_text()
    assert fresh == (DOCS / "lab.dot").read_text(), (
        "docs/lab.dot is stale: run docs/make-diagram.sh"
    )
    assert svg_texts((DOCS / "lab.svg").read_bytes()) == svg_texts(
        (tmp_path / "lab.svg").read_bytes()
    )
    assert "192.0.2.1/28" in fresh and "guest-01" in fresh
