"""Prices as data: ``prices.yaml`` (plus operator overrides) -> one dict of model name -> price.

Everything is resolved once at load (aliases flattened, LiteLLM units converted), so pricing an
exchange is a dict hit and a few multiplications; ``cost`` never raises, it answers None instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from sidecar.core.usage import Usage

DEFAULT_PATH = Path(__file__).with_name("prices.yaml")
PROVIDER_PREFIXES = frozenset({"mistral", "codestral"})  # LiteLLM-style "mistral/<model>"
COST_DECIMALS = 10

# LiteLLM ``model_info`` key -> (our key, factor from its per-unit price to ours).
LITELLM_KEYS: dict[str, tuple[str, float]] = {
    "input_cost_per_token": ("input_per_mtok", 1e6),
    "output_cost_per_token": ("output_per_mtok", 1e6),
    "cache_read_input_token_cost": ("cached_input_per_mtok", 1e6),
    "ocr_cost_per_page": ("ocr_per_kpage", 1e3),
    "input_cost_per_page": ("ocr_per_kpage", 1e3),
    "annotation_cost_per_page": ("ocr_annotated_per_kpage", 1e3),
    "output_cost_per_character": ("tts_per_mchar", 1e6),
    "input_cost_per_second": ("audio_per_minute", 60.0),
}


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD prices of one model; None means that unit is not billed for it."""

    input_per_mtok: float | None = None
    output_per_mtok: float | None = None
    cached_input_per_mtok: float | None = None
    ocr_per_kpage: float | None = None
    ocr_annotated_per_kpage: float | None = None
    audio_per_minute: float | None = None
    tts_per_mchar: float | None = None
    # Where no cached price is given: the share of the input price a cached prompt token bills at.
    cached_input_factor: float | None = None


PRICE_KEYS = frozenset(f.name for f in fields(ModelPrice))


def _price_value(model: str, key: str, value: object) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"price {key} of {model!r} must be a non-negative number, not {value!r}")
    return float(value)


def _price_fields(model: str, entry: Mapping) -> dict[str, float]:
    """Our keys taken as they are, LiteLLM keys converted to our units; other keys are ignored."""
    out: dict[str, float] = {}
    for key, value in entry.items():
        if key in PRICE_KEYS and value is not None:
            out[key] = _price_value(model, key, value)
    for key, (ours, factor) in LITELLM_KEYS.items():
        if entry.get(key) is not None:
            # round() drops the float noise of e.g. 1.5e-07 * 1e6 without losing a real digit.
            out[ours] = round(_price_value(model, key, entry[key]) * factor, 12)
    return out


def _aliases(entry: Mapping) -> list[str]:
    aliases = entry.get("aliases") or []
    return [aliases] if isinstance(aliases, str) else list(aliases)


def _is_cloud(name: str) -> bool:
    """A "<provider>/<model>" entry: a cloud's price, which Mistral's own billing rules do not reach."""
    return "/" in name


def _bare(model: str) -> str:
    prefix, slash, rest = model.partition("/")
    return rest if slash and prefix in PROVIDER_PREFIXES else model


class PriceTable:
    """Model name (or alias) -> ``ModelPrice``, and the cost of a ``Usage`` under it."""

    __slots__ = ("models", "aliases", "batch_discount", "source", "as_of", "_by_name")

    def __init__(self, models: Mapping[str, ModelPrice], aliases: Mapping[str, str],
                 batch_discount: float = 0.0, source: str | None = None, as_of: str | None = None):
        self.models = dict(models)
        self.aliases = dict(aliases)
        self.batch_discount = batch_discount
        self.source = source
        self.as_of = as_of
        self._by_name = dict(self.models)
        for alias, target in self.aliases.items():
            if alias in self.models:
                raise ValueError(f"{alias!r} is both a priced model and an alias of {target!r}")
            self._by_name[alias] = self.models[target]

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """Read a prices file (default: the one shipped beside this module)."""
        with open(path or DEFAULT_PATH, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
        models: dict[str, ModelPrice] = {}
        aliases: dict[str, str] = {}
        cached_factor = doc.get("cached_input_factor")
        if cached_factor is not None and not 0 <= _price_value("cached", "cached_input_factor", cached_factor) <= 1:
            raise ValueError(f"cached_input_factor must be between 0 and 1, not {cached_factor}")
        for name, entry in (doc.get("models") or {}).items():
            entry = entry or {}
            price = _price_fields(name, entry)
            if cached_factor is not None and not _is_cloud(name):
                price.setdefault("cached_input_factor", float(cached_factor))
            models[name] = ModelPrice(**price)
            for alias in _aliases(entry):
                if alias in aliases:
                    raise ValueError(f"alias {alias!r} given to both {aliases[alias]!r} and {name!r}")
                aliases[alias] = name
        discount = _price_value("batch", "batch_discount", doc.get("batch_discount", 0.0))
        if discount > 1:
            raise ValueError(f"batch_discount must be between 0 and 1, not {discount}")
        as_of = doc.get("as_of")
        return cls(models, aliases, discount, doc.get("source"), str(as_of) if as_of else None)

    def with_overrides(self, overrides: Mapping[str, Mapping] | None) -> PriceTable:
        """A new table with operator prices laid over these.

        Each value is our own keys or a LiteLLM ``model_info`` (optionally nested under
        ``model_info``). Overriding a model's own name moves its aliases too; overriding an alias
        detaches just that alias; a new name adds a model.
        """
        models, aliases = dict(self.models), dict(self.aliases)
        for raw_name, entry in (overrides or {}).items():
            if not isinstance(entry, Mapping):
                raise ValueError(f"price override for {raw_name!r} must be a mapping")
            entry = entry.get("model_info", entry) if isinstance(entry.get("model_info"), Mapping) else entry
            name = _bare(raw_name)
            target = aliases.pop(name, name)
            models[name] = replace(models.get(target, ModelPrice()), **_price_fields(name, entry))
            for alias in _aliases(entry):
                aliases[alias] = name
        return PriceTable(models, aliases, self.batch_discount, self.source, self.as_of)

    def with_routes(self, routes: Mapping[str, str]) -> PriceTable:
        """A new table where each config alias (``model_name``) bills as the upstream model it routes to.

        An alias whose upstream model is unpriced stays unpriced (its cost is null and warned about);
        ``with_overrides`` applied after this gives an alias its own ``model_info`` price.
        """
        models, aliases = dict(self.models), dict(self.aliases)
        for alias, upstream in routes.items():
            upstream = _bare(upstream)
            target = upstream if upstream in models else aliases.get(upstream)
            if target is None or target == alias:
                continue
            if alias in models:  # a config alias named like a priced model bills as where it goes
                models[alias] = models[target]
            else:
                aliases[alias] = target
        return PriceTable(models, aliases, self.batch_discount, self.source, self.as_of)

    def names(self) -> frozenset[str]:
        """Every priced model name and alias (the model label values metrics allow)."""
        return frozenset(self._by_name)

    def price_for(self, model: str | None) -> ModelPrice | None:
        """The price of ``model``, its alias or its ``mistral/``-prefixed name; None if unpriced."""
        if not isinstance(model, str):
            return None
        price = self._by_name.get(model)
        if price is None and "/" in model:
            price = self._by_name.get(_bare(model))
        return price

    def cost(self, model: str | None, usage: Usage | None, batch: bool = False) -> float | None:
        """USD cost of ``usage`` on ``model``, rounded to 10 places; None when the model is unpriced."""
        price = self.price_for(model)
        if price is None or usage is None:
            return None
        try:
            total = _usage_cost(price, usage)
        except (TypeError, ValueError):  # a hand-built Usage with odd fields: unpriceable, not fatal
            return None
        if batch:
            total *= 1.0 - self.batch_discount
        return round(total, COST_DECIMALS) + 0.0  # + 0.0 turns a -0.0 into 0.0


def _cached_rate(price: ModelPrice) -> float | None:
    """USD per million cached prompt tokens: the published cached price, else the model's share of its
    input price (Mistral: 10 %), else None (a cloud, or an operator's model: they bill at the input price)."""
    if price.cached_input_per_mtok is not None:
        return price.cached_input_per_mtok
    if price.cached_input_factor is not None and price.input_per_mtok is not None:
        return price.input_per_mtok * price.cached_input_factor
    return None


def _usage_cost(price: ModelPrice, usage: Usage) -> float:
    """Reasoning tokens (Magistral's thinking) are part of ``completion_tokens`` and bill at the output
    price, as Mistral bills them; cached prompt tokens bill at the cached rate (``_cached_rate``)."""
    total = 0.0
    if price.input_per_mtok is not None:
        rate = _cached_rate(price) if usage.cached_tokens else None
        cached = min(usage.cached_tokens, usage.prompt_tokens) if rate is not None else 0
        total += (usage.prompt_tokens - cached) * price.input_per_mtok / 1e6
        total += cached * (rate or 0.0) / 1e6
    if price.output_per_mtok is not None:
        total += usage.completion_tokens * price.output_per_mtok / 1e6
    if usage.pages and price.ocr_per_kpage is not None:
        per_kpage = price.ocr_per_kpage
        if usage.annotated and price.ocr_annotated_per_kpage is not None:
            per_kpage = price.ocr_annotated_per_kpage
        total += usage.pages * per_kpage / 1000
    if usage.audio_seconds and price.audio_per_minute is not None:
        total += usage.audio_seconds / 60 * price.audio_per_minute
    if usage.characters and price.tts_per_mchar is not None:
        total += usage.characters * price.tts_per_mchar / 1e6
    return total
