"""params.yaml and docs/configuration.md written from the typed configs: each pydantic Field is the one home of its
default and its description, and both files are rendered from them (tests hold the committed files current)."""
from __future__ import annotations

import textwrap

import yaml
from pydantic import BaseModel

from relkd.section import Section

WIDTH = 120
HEADER = """\
# Every knob of the pipeline, grouped by stage: the embedded default. Written from the typed configs in src/relkd
# (each key's default and description live in its pydantic Field; `relkd params write` re-renders this file,
# keeping its values, and `relkd params write --defaults` resets them). Change values here, with
# `relkd profile NAME` (profiles/NAME.yaml merged over this file: tiny, paper, real-cpu, ablations, ...), or
# one at a time with `dvc exp run -S key=value`. Every key: docs/configuration.md.
"""


def _inline(value) -> str:
    """A JSON-like value as one line of YAML flow style."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10 ** 6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _doc(cls) -> str:
    """The first paragraph of a section class's docstring, on one line."""
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()) if cls.__doc__ else ""


def _comment(lines: list[str], pad: str, text: str) -> None:
    for line in textwrap.wrap(text, WIDTH - len(pad) - 2, break_long_words=False, break_on_hyphens=False):
        lines.append(f"{pad}# {line}")


def _section(obj: BaseModel, dumped: dict, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for name, field in type(obj).model_fields.items():
        value = getattr(obj, name)
        if isinstance(value, Section):
            head = f"{pad}{name}:"
            doc = _doc(type(value))
            if doc and len(head) + 3 + len(doc) <= WIDTH:
                lines.append(f"{head}  # {doc}")
            else:
                if doc:
                    _comment(lines, pad, doc)
                lines.append(head)
            _section(value, dumped[name], indent + 2, lines)
            continue
        desc = " ".join((field.description or "").split())
        if isinstance(value, dict) and value and all(isinstance(v, Section) for v in value.values()):
            # A table of sections (student variants): one flow line each, defaults left out.
            if desc:
                _comment(lines, pad, desc)
            lines.append(f"{pad}{name}:")
            for key, sub in value.items():
                lines.append(f"{pad}  {key}: {_inline(sub.model_dump(mode='json', exclude_defaults=True))}")
            continue
        line = f"{pad}{name}: {_inline(dumped[name])}"
        if desc and len(line) + 3 + len(desc) <= WIDTH:
            lines.append(f"{line}  # {desc}")
        else:
            if desc:
                _comment(lines, pad, desc)
            lines.append(line)


def params_yaml(params: BaseModel) -> str:
    """The text of params.yaml for `params` (a relkd.config.Params): every key with its value, each described by
    its Field's description as a comment."""
    lines: list[str] = []
    _section(params, params.model_dump(mode="json"), 0, lines)
    return HEADER + "\n".join(lines) + "\n"


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    return text or str(annotation).replace("typing.", "").replace("NoneType", "None")


def configuration_md(params_cls) -> str:
    """docs/configuration.md: per section of params.yaml, its purpose and a table of its keys (type, default,
    description)."""
    out = ["# Configuration", "",
           "Every key of `params.yaml`, generated from the typed configs (`relkd params doc`; a test holds this page "
           "current). Profiles (`profiles/*.yaml`) override some of them: `paper.yaml` holds the paper's values.", ""]

    def walk(cls, path: str, default) -> None:
        rows = []
        subs = []
        for name, field in cls.model_fields.items():
            value = getattr(default, name)
            if isinstance(value, Section):
                subs.append((type(value), f"{path}.{name}" if path else name, value))
                continue
            if isinstance(value, dict) and value and all(isinstance(v, Section) for v in value.values()):
                shown = {k: v.model_dump(mode="json", exclude_defaults=True) for k, v in value.items()}
            else:
                shown = default.model_dump(mode="json")[name]
            desc = " ".join((field.description or "").split()).replace("|", "\\|")
            rows.append(f"| `{name}` | `{_type_name(field.annotation)}` | `{_inline(shown)}` | {desc} |"
                        .replace("`|", "`\\|"))
        if path:
            out.extend([f"## `{path}`", "", _doc(cls), ""])
            if rows:
                out.extend(["| key | type | default | description |", "|---|---|---|---|", *rows, ""])
        for sub_cls, sub_path, sub_value in subs:
            walk(sub_cls, sub_path, sub_value)

    walk(params_cls, "", params_cls())
    return "\n".join(out).rstrip() + "\n"
