"""Resolving rank profiles as a config file is read: ``inherit`` and partial overrides.

Like Vespa rank profiles, a profile may inherit another and override parts of
it; cascade resolves that once, on the raw YAML, so every profile it validates
and serves is complete and ``cascade config show`` prints what actually runs.

- The top-level ``fusion``, ``features`` and ``stages`` are the ``default``
  profile (``profiles.default`` may be written instead, not both); after
  resolution the top level holds the default profile and ``profiles`` the others.
- ``fusion`` and ``features`` given as mappings are merged into the inherited
  ones key by key (a fusion with another ``method`` replaces it whole).
- ``stages`` given as a list replaces the inherited list; given as a mapping it
  edits inherited stages by name: ``{cross_encoder: {rerank: 30}}`` changes one
  key, ``{ltr: null}`` drops the stage, and ``{enabled: false}`` turns it off.
"""

from __future__ import annotations

from typing import Any, Callable

PROFILE_KEYS = ("fusion", "features", "stages")


def _stage_name(st: Any) -> str | None:
    if not isinstance(st, dict):
        return None
    return st.get("name") or st.get("type")


def _merge(base: Any, over: Any) -> Any:
    """``over`` merged into ``base``: mappings key by key (recursively), anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out
    return over


def _merge_stages(base: list[Any], over: dict[str, Any], where: str) -> list[Any]:
    names = [_stage_name(s) for s in base]
    out = list(base)
    for name, edit in over.items():
        if name not in names:
            raise ValueError(f"{where}.{name}: the inherited profile has no stage {name!r} (its stages: "
                             f"{[n for n in names if n]}); write the whole `stages:` list to add one")
        i = names.index(name)
        if edit is None:
            out[i] = None
        elif isinstance(edit, dict):
            if "type" in edit and edit["type"] != (base[i] or {}).get("type"):
                out[i] = edit  # another stage type under the same name: a replacement, not an edit
            else:
                out[i] = _merge(base[i], edit)
        else:
            raise ValueError(f"{where}.{name}: expected a mapping of keys to change (or null to drop the stage)")
    return [s for s in out if s is not None]


def resolve_profiles(data: Any, normalize: Callable[[Any], Any], context: dict | None = None) -> Any:
    """The raw config with ``profiles`` complete (inherit applied) and the top level set to the default profile.

    ``normalize`` fills the implicit tags of a profile part (``fusion: {k: 60}`` means RRF).
    ``context`` (pydantic's validation context) learns whether the default profile was written
    at the top level, so that error messages name the key the user wrote.
    """
    if not isinstance(data, dict):
        return data
    raw = data.get("profiles")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return data  # pydantic reports the wrong type at `profiles`
    top = {k: data[k] for k in PROFILE_KEYS if k in data}
    raw = dict(raw)
    if "default" in raw:
        if top:
            raise ValueError(f"profiles.default: the default profile is written twice, at the top level "
                             f"({', '.join(top)}) and under profiles; keep one")
        if context is not None:
            context["default_at_top"] = False
        top = raw["default"] if isinstance(raw["default"], dict) else {}
    raw["default"] = top
    resolved: dict[str, Any] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Any:
        if name in resolved:
            return resolved[name]
        prof = raw[name]
        if prof is None:
            prof = {}
        if not isinstance(prof, dict):
            return prof  # pydantic reports it at profiles.NAME
        parent = prof.get("inherit")
        own = {k: v for k, v in prof.items() if k != "inherit"}
        if parent is None:
            out = own
        else:
            if not isinstance(parent, str) or parent not in raw:
                raise ValueError(f"profiles.{name}.inherit: no profile {parent!r} to inherit (profiles: {sorted(raw)})")
            if parent in chain:
                raise ValueError(f"profiles.{name}.inherit: profiles inherit in a circle ({' -> '.join((*chain, parent))})")
            base = resolve(parent, (*chain, parent))
            out = {k: v for k, v in base.items() if k != "description"} if isinstance(base, dict) else {}
            for k, v in own.items():
                if k == "stages" and isinstance(v, dict):
                    out["stages"] = _merge_stages(list(out.get("stages") or []), v, f"profiles.{name}.stages")
                elif k == "fusion" and isinstance(v, dict) and isinstance(out.get("fusion"), dict) and \
                        v.get("method", out["fusion"].get("method", "rrf")) != out["fusion"].get("method", "rrf"):
                    out["fusion"] = v
                else:
                    out[k] = _merge(out.get(k), v)
        out = normalize(out)
        resolved[name] = out
        return out

    for name in raw:
        resolve(name, (name,))
    out = {k: v for k, v in data.items() if k not in PROFILE_KEYS}
    default = resolved.pop("default")
    if isinstance(default, dict):  # the top level is always the default profile; `profiles` holds the others
        out.update({k: default[k] for k in PROFILE_KEYS if k in default})
    if resolved or "profiles" in data:
        out["profiles"] = resolved
    return out
