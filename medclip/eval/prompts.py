"""Class files and prompt embeddings for zero-shot classification.

A class file (YAML, see ``recipes/classes/``) describes each class or condition by one or more
prompts, optionally wrapped in templates::

    task: single                      # single (softmax over classes) or multi (one yes/no per condition)
    templates: ["a chest x-ray showing {}", "{}"]
    label_column: finding             # single-label manifests: the column holding the class value
    classes:
      NORMAL:
        prompts: ["no acute cardiopulmonary process", "normal lungs"]
        values: [NORMAL]              # manifest values / folder names of this class (default: its name)
      PNEUMONIA: ["pneumonia", "lobar consolidation"]   # shorthand: a list of prompts

Multi-label files add ``negative_templates`` (default ``["no {}"]``) or per-condition ``negatives``; a
condition marked ``no_finding: true`` is scored against the average of all the other conditions'
prompts ("normal" vs "any finding") instead of the nonsense "no no finding".

Prompt ensembling follows the CLIP paper: every prompt × template is encoded, L2-normalised, averaged
and renormalised. Prompt embeddings are cached on disk per model (key: a hash of the weights, the
architecture and the exact texts), so re-running on new images never re-encodes prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import from_dict, load_yaml
from ..errors import ConfigError

TASKS = ("single", "multi")


@dataclass
class ClassSpec:
    """One class (single-label) or condition (multi-label).

    Attributes:
        prompts: descriptions of the class; each is wrapped in every template.
        templates: override of the file's templates for this class.
        values: single-label: manifest values or folder names meaning this class (default: the name).
        filename_contains: folder input: the file name must contain one of these (case-insensitive),
            e.g. ``bacteria`` / ``virus`` for the 3-class Kermany task.
        column: multi-label: the manifest column with this condition's 1/0 label (default: the name).
        negatives: multi-label: explicit negative prompts (templates are not applied to them).
        no_finding: multi-label: this is the "No Finding" class (see the module docstring).
        description: free text for humans.
    """

    prompts: list = field(default_factory=list)
    templates: list | None = None
    values: list | None = None
    filename_contains: list | None = None
    column: str | None = None
    negatives: list | None = None
    no_finding: bool = False
    description: str = ""


@dataclass
class ClassFile:
    """A whole class file (see the module docstring).

    Attributes:
        classes: class name -> :class:`ClassSpec` (in file order).
        task: ``single`` or ``multi``.
        templates: templates with one ``{}``, applied to every prompt.
        negative_templates: multi-label: templates turning a prompt into its negation.
        label_column: single-label: the manifest column holding class values.
        patient_regex: folder input: regex whose first match in the file name is the patient key
            (for the patient-level bootstrap); default: one patient per file.
        description: free text for humans.
    """

    classes: dict = field(default_factory=dict)
    task: str = "single"
    templates: list = field(default_factory=lambda: ["{}"])
    negative_templates: list = field(default_factory=lambda: ["no {}"])
    label_column: str = "label"
    patient_regex: str | None = None
    description: str = ""

    @property
    def names(self) -> list[str]:
        return list(self.classes)


def parse_class_file(data: dict, where: str = "classes file") -> ClassFile:
    """Build a :class:`ClassFile` from a dict, refusing unknown keys and malformed prompts."""
    data = dict(data)
    raw = data.pop("classes", None)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: 'classes' must be a non-empty mapping of class name -> prompts")
    cf = _strict(ClassFile, data, "", where)
    if cf.task not in TASKS:
        raise ConfigError(f"{where}: task must be one of {TASKS}, got '{cf.task}'")
    for name, spec in raw.items():
        spec = {"prompts": spec} if isinstance(spec, (list, str)) else spec
        if isinstance(spec.get("prompts"), str):
            spec = {**spec, "prompts": [spec["prompts"]]}
        cf.classes[str(name)] = _strict(ClassSpec, spec, f"classes.{name}", where)
    _validate(cf, where)
    return cf


def _strict(cls, data, prefix: str, where: str):
    """:func:`medclip.config.from_dict` with the file name in front of its one-line message."""
    try:
        return from_dict(cls, data, prefix)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _validate(cf: ClassFile, where: str) -> None:
    if cf.task == "single" and len(cf.classes) < 2:
        raise ConfigError(f"{where}: a single-label task needs at least 2 classes, got {cf.names}")
    for name, spec in cf.classes.items():
        if not spec.prompts or not all(isinstance(p, str) and p.strip() for p in spec.prompts):
            raise ConfigError(f"{where}: classes.{name}.prompts must be a non-empty list of non-empty strings")
        for key in ("templates", "values", "filename_contains", "negatives"):
            value = getattr(spec, key)
            if value is not None and (not isinstance(value, list) or not value):
                raise ConfigError(f"{where}: classes.{name}.{key} must be a non-empty list")
        if cf.task == "single" and (spec.negatives or spec.no_finding):
            raise ConfigError(f"{where}: classes.{name}: 'negatives'/'no_finding' only apply to task: multi")
        for template in (spec.templates or cf.templates) + (cf.negative_templates if cf.task == "multi" else []):
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ConfigError(f"{where}: template {template!r} must contain exactly one '{{}}'")
    if sum(s.no_finding for s in cf.classes.values()) > 1:
        raise ConfigError(f"{where}: at most one class can be marked no_finding")
    if any(s.no_finding for s in cf.classes.values()) and len(cf.classes) < 2:
        raise ConfigError(f"{where}: a no_finding class needs other conditions to be contrasted with")


def load_class_file(path: str | os.PathLike) -> ClassFile:
    """Read and validate a class file (YAML, ``yaml.safe_load``); unknown keys raise a one-line error."""
    return parse_class_file(load_yaml(path), str(path))


def positive_texts(cf: ClassFile, name: str) -> list[str]:
    """Every template applied to every prompt of class ``name``."""
    spec = cf.classes[name]
    return [t.format(p) for p in spec.prompts for t in (spec.templates or cf.templates)]


def negative_texts(cf: ClassFile, name: str) -> list[str]:
    """The negated prompts of a multi-label condition (empty for a no_finding class without negatives)."""
    spec = cf.classes[name]
    if spec.negatives:
        return list(spec.negatives)
    if spec.no_finding:
        return []
    return [t.format(p) for p in spec.prompts for t in cf.negative_templates]


def ensemble(embeddings: torch.Tensor) -> torch.Tensor:
    """CLIP prompt ensembling: mean of the L2-normalised embeddings ``(T, D)``, renormalised -> ``(D,)``."""
    return F.normalize(F.normalize(embeddings.float(), dim=-1).mean(0), dim=-1)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's architecture and every weight (identifies a model for caching)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        from ..config import to_dict

        digest.update(json.dumps(to_dict(config), sort_keys=True, default=str).encode())
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_cache_dir() -> str:
    """``$MEDCLIP_CACHE_DIR/prompts`` or ``~/.cache/medclip/prompts``."""
    root = os.environ.get("MEDCLIP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "medclip")
    return os.path.join(root, "prompts")


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings ``(T, D)`` in input order.

    Texts are sorted by token length and encoded in batches, so each batch is trimmed to a similar real
    length by the text tower (no work on padding); results are put back in the input order.
    """
    ids = tokenizer(texts)
    order = torch.argsort((ids != 0).sum(1), stable=True)
    device = next(model.parameters()).device
    out = torch.empty(len(texts), model.config.embed_dim)
    for start in range(0, len(texts), batch_size):
        index = order[start:start + batch_size]
        out[index] = model.encode_text(ids[index].to(device)).float().cpu()
    return out


def cached_text_embeddings(model, tokenizer, texts: list[str], cache_dir: str | None = None,
                           fingerprint: str | None = None) -> torch.Tensor:
    """:func:`encode_texts` through an on-disk cache (safetensors) keyed by weights hash + texts.

    Args:
        cache_dir: folder of the cache; None disables caching.
        fingerprint: precomputed :func:`weights_fingerprint` of ``model`` (computed when None).
    """
    if not cache_dir:
        return encode_texts(model, tokenizer, texts)
    from safetensors.torch import load_file, save_file

    fingerprint = fingerprint or weights_fingerprint(model)
    key = hashlib.sha256(json.dumps([fingerprint, texts]).encode()).hexdigest()
    path = os.path.join(cache_dir, f"{key}.safetensors")
    if os.path.exists(path):
        try:
            return load_file(path)["embeddings"]
        except Exception:  # a torn write from a killed run: recompute
            pass
    emb = encode_texts(model, tokenizer, texts)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    save_file({"embeddings": emb.contiguous()}, tmp, metadata={"texts": json.dumps(texts)[:60000]})
    os.replace(tmp, path)
    return emb


def class_embeddings(model, cf: ClassFile, tokenizer=None, cache_dir: str | None = None,
                     fingerprint: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ensembled class embeddings: positives ``(K, D)`` and, for multi-label, negatives ``(K, D)``.

    All prompts of all classes are encoded together in one call (one cache entry). A ``no_finding``
    condition without explicit negatives is contrasted with the ensemble of every other condition's
    positive prompts.
    """
    if tokenizer is None:
        from ..tokenizer import get_tokenizer

        tokenizer = get_tokenizer(model.config)
    groups = [positive_texts(cf, n) for n in cf.names]
    if cf.task == "multi":
        groups += [negative_texts(cf, n) for n in cf.names]
    flat = [t for g in groups for t in g]
    emb = cached_text_embeddings(model, tokenizer, flat, cache_dir, fingerprint)
    parts, start = [], 0
    for g in groups:
        parts.append(emb[start:start + len(g)])
        start += len(g)
    k = len(cf.names)
    pos = torch.stack([ensemble(p) for p in parts[:k]])
    if cf.task == "single":
        return pos, None
    neg = []
    for i in range(k):
        if parts[k + i].shape[0]:
            neg.append(ensemble(parts[k + i]))
        else:  # no_finding: "any of the other findings"
            neg.append(ensemble(torch.cat([parts[j] for j in range(k) if j != i])))
    return pos, torch.stack(neg)
