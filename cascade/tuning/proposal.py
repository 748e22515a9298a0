"""Writing the chosen setting as a rank profile: a profile edit that inherits the tuned one, checked and diffed.

The proposal is a new profile (``tuned`` by default) inheriting the profile
that was tuned and changing only what the sweep chose: the fusion, each
stage's ``rerank``/``keep``/``combine``, ``enabled: false`` for stages that do
not pay, and ``early_exit`` (the stage list is written whole, since edits by
name would merge a new ``combine`` into the inherited one). The whole config with the new profile is parsed
by the same validation as any config file before it is written, and the
diff is between the two profiles as they resolve (what would actually run).
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import yaml

from cascade.config import IndexConfig, dump_config, parse_config
from cascade.tuning.space import Setting, StageSpec


def profile_edit(cfg: IndexConfig, profile: str, specs: Sequence[StageSpec], fusion: Any, setting: Setting,
                 description: str) -> dict[str, Any]:
    """The ``profiles.NAME`` entry: ``inherit``, the fusion and the profile's stage list with the chosen edits."""
    stages: dict[str, Any] = {}
    enabled = [ss.enabled for ss in setting.stages]
    for j, (sp, ss) in enumerate(zip(specs, setting.stages)):
        if not ss.enabled:
            stages[sp.name] = {"enabled": False, "combine": None, "early_exit": None}
            continue
        edit: dict[str, Any] = {"enabled": True, "rerank": ss.rerank, "keep": ss.keep}
        prev = next((specs[i].name for i in range(j - 1, -1, -1) if enabled[i]), "fusion")
        comb = ss.resolved_combine(sp.name, prev)
        if comb is not None:  # only scores this stage can see in the proposal (a disabled source is dropped)
            seen = {"fusion", sp.name, *(specs[i].name for i in range(j) if enabled[i])}
            weights = {k: w for k, w in comb.weights.items() if k in seen}
            comb = comb.model_copy(update={"weights": weights}) if set(weights) - {sp.name} else None
        edit["combine"] = comb.model_dump(mode="json") if comb is not None else None
        edit["early_exit"] = ss.exit.model_dump(mode="json", exclude_defaults=True) if ss.exit else None
        stages[sp.name] = edit
    # A stage's keep must not cut the next enabled stage's window.
    on = [j for j in range(len(specs)) if enabled[j]]
    for a, b in zip(on, on[1:]):
        keep, nxt = stages[specs[a].name]["keep"], setting.stages[b].rerank
        if keep is not None and nxt is not None and keep < nxt:
            stages[specs[a].name]["keep"] = nxt
    # The whole stage list (a mapping of edits would merge combine weights into the inherited ones).
    listed = []
    for st in cfg.profile(profile).stages:
        d = st.model_dump(mode="json", exclude_defaults=True)
        d["type"] = st.type
        for k, v in stages.get(st.stage_name, {}).items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        if d.get("enabled", True) is True:
            d.pop("enabled", None)
        listed.append(d)
    return {"inherit": profile, "description": description, "fusion": fusion.model_dump(mode="json"),
            "stages": listed}


def with_profile(cfg: IndexConfig, name: str, edit: dict[str, Any], source: str) -> IndexConfig:
    """``cfg`` with profile ``name`` added, through the same validation as a config file (errors name the key)."""
    data = yaml.safe_load(dump_config(cfg))
    if name in cfg.profile_names():
        raise ValueError(f"--name: the index already has a profile {name!r}; choose another name")
    profiles = dict(data.get("profiles") or {})
    profiles[name] = edit
    data["profiles"] = profiles
    return parse_config(data, source)


def profile_yaml(cfg: IndexConfig, name: str) -> str:
    """A profile as it resolves (fusion, features, stages), in YAML."""
    prof = cfg.profile(name)
    data = {"fusion": prof.fusion.model_dump(mode="json"),
            "stages": [s.model_dump(mode="json", exclude_defaults=True) for s in prof.stages]}
    return yaml.safe_dump(data, sort_keys=False)


def diff(cfg: IndexConfig, old: str, new: str) -> str:
    """Unified diff between two resolved profiles of ``cfg``."""
    a, b = profile_yaml(cfg, old).splitlines(keepends=True), profile_yaml(cfg, new).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, fromfile=f"profile {old}", tofile=f"profile {new}"))


def config_text(cfg: IndexConfig, note: str) -> str:
    """The config file to write: the tuned config, headed by a comment saying where it came from."""
    return "".join(f"# {line}\n" for line in note.splitlines()) + dump_config(cfg)
