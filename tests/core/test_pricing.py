"""Prices as data: hand-computed costs from the shipped table, aliases, prefixes and overrides."""

from __future__ import annotations

import collections
import re

import pytest

from sidecar.core.pricing import PriceTable
from sidecar.core.usage import Usage


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


def test_the_shipped_table_says_where_its_numbers_come_from(prices):
    assert prices.as_of == "2026-08-13"
    assert "50c1afe" in prices.source
    assert prices.batch_discount == 0.5
    assert len(prices.models) >= 38


def test_tokens_are_priced_per_million(prices):
    # mistral-small-latest = Mistral Small 4: $0.15 in, $0.6 out per million tokens.
    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    assert prices.cost("mistral-small-latest", usage) == 0.00045  # 0.00015 + 0.0003


def test_batch_halves_the_cost(prices):
    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    assert prices.cost("mistral-small-latest", usage, batch=True) == 0.000225


@pytest.mark.parametrize(("model", "annotated", "cost"), [
    ("mistral-ocr-latest", False, 0.04),  # OCR 4.1: $4 per 1000 pages
    ("mistral-ocr-latest", True, 0.05),   # $5 per 1000 annotated pages
    ("mistral-ocr-2512", False, 0.02),    # OCR 3: $2
    ("mistral-ocr-2512", True, 0.03),
])
def test_ocr_is_priced_per_thousand_pages(prices, model, annotated, cost):
    assert prices.cost(model, Usage(pages=10, annotated=annotated)) == cost


def test_audio_is_priced_per_minute_plus_tokens_where_priced(prices):
    assert prices.cost("voxtral-mini-latest", Usage(audio_seconds=90.0, prompt_tokens=50)) == 0.0045
    # voxtral-small: $0.004/min + $0.1/M in + $0.4/M out
    usage = Usage(audio_seconds=60.0, prompt_tokens=1000, completion_tokens=1000)
    assert prices.cost("voxtral-small-latest", usage) == 0.0045


def test_speech_is_priced_per_million_characters(prices):
    assert prices.cost("voxtral-mini-tts-latest", Usage(characters=1000, prompt_tokens=99)) == 0.016


def test_free_models_cost_zero_not_null(prices):
    assert prices.cost("mistral-moderation-2603", Usage(prompt_tokens=10_000)) == 0.0
    assert prices.cost("labs-leanstral-1-5", Usage(prompt_tokens=10, completion_tokens=10)) == 0.0


@pytest.mark.parametrize("model", [None, "", "gpt-4o", "mistral-small-2402", "mistral-ocr-2503",
                                   "openai/mistral-small-latest", 42])
def test_unpriced_is_none(prices, model):
    assert prices.cost(model, Usage(prompt_tokens=1)) is None


def test_no_usage_is_none(prices):
    assert prices.cost("mistral-small-latest", None) is None


@pytest.mark.parametrize("name", ["mistral/mistral-small-latest", "mistral-small-2603",
                                  "codestral/mistral-small-latest"])
def test_prefixes_and_aliases_resolve(prices, name):
    assert prices.price_for(name) is prices.price_for("mistral-small-latest")
    assert prices.price_for(name).output_per_mtok == 0.6


def test_legacy_models_are_priced(prices):
    assert prices.cost("open-mistral-nemo", Usage(prompt_tokens=1_000_000)) == 0.15
    assert prices.cost("codestral/codestral-latest", Usage(completion_tokens=1_000_000)) == 0.9


def test_litellm_model_info_override_changes_the_cost(prices):
    table = prices.with_overrides({
        "mistral/mistral-small-latest": {"model_info": {"input_cost_per_token": 1e-06,
                                                        "output_cost_per_token": 2e-06,
                                                        "input_cost_per_pixel": 1.0, "mode": "chat"}},
    })
    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    assert table.cost("mistral-small-latest", usage) == 0.002
    assert table.cost("mistral-small-2603", usage) == 0.00045  # only the alias was detached
    assert prices.cost("mistral-small-latest", usage) == 0.00045  # the original table is untouched


def test_overriding_a_model_moves_its_aliases_and_adds_new_models(prices):
    table = prices.with_overrides({
        "mistral-ocr-4-1": {"ocr_cost_per_page": 0.001, "annotation_cost_per_page": 0.002},
        "my-finetune": {"input_per_mtok": 1.0, "output_per_mtok": 3.0, "aliases": ["ft-latest"]},
        "voxtral-mini-2602": {"input_cost_per_second": 0.0001},
        "voxtral-mini-tts-2603": {"output_cost_per_character": 0.00002},
    })
    assert table.cost("mistral-ocr-latest", Usage(pages=10)) == 0.01
    assert table.cost("mistral-ocr-latest", Usage(pages=10, annotated=True)) == 0.02
    assert table.cost("ft-latest", Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)) == 4.0
    assert table.cost("voxtral-mini-latest", Usage(audio_seconds=60)) == 0.006
    assert table.cost("voxtral-mini-tts-latest", Usage(characters=1_000_000)) == 20.0


@pytest.mark.parametrize("bad", [{"input_per_mtok": -1}, {"input_cost_per_token": "cheap"}, "1.0"])
def test_bad_override_fails_at_start_up(prices, bad):
    with pytest.raises(ValueError):
        prices.with_overrides({"mistral-small-latest": bad})


def test_duplicate_alias_in_a_prices_file_is_refused(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  a:\n    input_per_mtok: 1\n    aliases: [x]\n"
                    "  b:\n    input_per_mtok: 2\n    aliases: [x]\n")
    with pytest.raises(ValueError, match="alias 'x'"):
        PriceTable.load(path)


def test_costs_carry_no_float_noise(prices):
    usage = Usage(prompt_tokens=3, completion_tokens=7)
    cost = prices.cost("mistral-large-latest", usage)  # 3*0.5/1e6 + 7*1.5/1e6 = 0.000012
    assert cost == 0.000012 and repr(cost) == "1.2e-05"


# -- the shipped table against Mistral's published prices (../shared/reference/mistral-api.md §9) ---------
def _reference_rows() -> list[tuple[list[str], str, str]]:
    from ..conftest import REFERENCE

    notes = REFERENCE / "mistral-api.md"
    if not notes.exists():
        pytest.skip(f"{notes} is absent (a clone without ../shared): the price table is not compared")
    section = notes.read_text().split("## 9.", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and "`" in cells[1]:
            rows.append((re.findall(r"`([^`]+)`", cells[1]), cells[3], cells[4]))
    return rows


def _dollars(cell: str, unit: str) -> float | None:
    """The USD amount given per ``unit`` in a price cell (``$0.3 (€0.26) /M Tokens; ...``), if any."""
    for part in cell.split(";"):
        found = re.match(r"\s*(?:free \()?\$([0-9.]+)[^/]*/\s*" + re.escape(unit) + r"\s*(\[Input\]|\[Output\])?\s*\)?\s*$",
                         part)
        if found:
            return float(found.group(1))
    return None


def test_every_published_price_is_in_the_shipped_table(prices):
    rows = _reference_rows()
    named = collections.Counter(name for names, _, _ in rows for name in names)
    checked = 0
    for names, given, taken in rows:
        expected = {
            "input_per_mtok": _dollars(given, "M Tokens"),
            "output_per_mtok": _dollars(taken, "M Tokens"),
            "ocr_per_kpage": _dollars(given, "1000 Pages"),
            "ocr_annotated_per_kpage": _dollars(given, "1000 Annotated Pages"),
            "audio_per_minute": _dollars(given, "Min"),
            "tts_per_mchar": _dollars(taken, "M Chars"),
        }
        expected = {unit: value for unit, value in expected.items() if value is not None}
        for name in names:
            if named[name] > 1 or not expected:
                continue  # a name the source prices twice (see prices.yaml), or a model without a price
            price = prices.price_for(name)
            assert price is not None, f"{name} is published with prices but missing from prices.yaml"
            assert {unit: getattr(price, unit) for unit in expected} == expected, name
            checked += 1
    assert checked >= 50, f"only {checked} model names compared: has the reference's table changed shape?"


# -- the models users call, aliases, cached and reasoning tokens ------------------------------------
SEEDS = __import__("pathlib").Path(__file__).resolve().parents[2].parent / "shared" / "seeds"
_SEED_MODEL = re.compile(r"(?<![/.\w])(?:mistral|codestral)/([a-z0-9][a-z0-9.-]+)|model=\"([a-z0-9][a-z0-9.-]+)\"")
# Named in the seeds' prose (the issue lists them) though not in a model= or mistral/ form.
NAMED_IN_PROSE = ("mistral-moderation-latest",)


def test_every_model_the_seeds_name_has_a_price(prices):
    if not SEEDS.is_dir():
        pytest.skip(f"../shared/seeds not found ({SEEDS}): the users' documents are not beside this checkout")
    named = {a or b for text in (p.read_text(errors="replace") for p in SEEDS.glob("*.txt"))
             for a, b in _SEED_MODEL.findall(text)}
    named = {m for m in named if not m.startswith(("mistral.", "v1"))} | set(NAMED_IN_PROSE)
    assert len(named) >= 15
    assert [m for m in sorted(named) if prices.price_for(m) is None] == []


@pytest.mark.parametrize(("model", "cost"), [
    ("mistral-tiny", 0.5), ("open-mistral-7b", 0.5), ("open-mixtral-8x7b", 1.4), ("open-mixtral-8x22b", 8.0),
    ("open-codestral-mamba", 0.5), ("codestral-mamba-latest", 0.5), ("mistral-large-2407", 8.0),
    ("magistral-small-2506", 2.0), ("magistral-medium-2506", 7.0), ("mistral-moderation-latest", 0.1),
])
def test_retired_models_bill_at_their_last_published_price(prices, model, cost):
    assert prices.cost(model, Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)) == cost


def test_a_config_alias_bills_as_the_model_it_routes_to_unless_it_has_its_own_price(prices):
    table = prices.with_routes({"mistral-nemo": "open-mistral-nemo", "cheap": "mistral-small-latest",
                                "mistral-small-latest": "mistral/mistral-large-latest", "mine": "ft:unknown"})
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert table.cost("mistral-nemo", usage) == 0.3  # open-mistral-nemo-2407: $0.15 + $0.15
    assert table.cost("cheap", usage) == 0.75
    assert table.cost("mistral-small-latest", usage) == 2.0  # where it goes (large: 0.5 + 1.5), not its name
    assert table.cost("mine", usage) is None
    own = table.with_overrides({"mistral-nemo": {"input_cost_per_token": 1e-6}})
    assert own.cost("mistral-nemo", usage) == 1.15  # its own input price, the routed output price


def test_cached_prompt_tokens_bill_at_a_tenth_of_the_input_price_as_mistral_bills_them(prices):
    cached = Usage(prompt_tokens=1_000_000, completion_tokens=0, cached_tokens=400_000)
    # Mistral Small 4, $0.15 in: 600k tokens at $0.15/M, 400k cached at 10 % of it.
    assert prices.cost("mistral-small-latest", cached) == pytest.approx(0.6 * 0.15 + 0.4 * 0.015)
    assert prices.cost("magistral-medium-latest", cached) == pytest.approx(0.6 * 2.0 + 0.4 * 0.2)
    # GLM 5.2 publishes its own cached price ($0.14, which is also 10 % of $1.4).
    assert prices.cost("zai-glm-5-2", cached) == pytest.approx(0.6 * 1.4 + 0.4 * 0.14)
    # More cached tokens than prompt tokens (a confused upstream) never bills below zero input.
    assert prices.cost("mistral-small-latest", Usage(prompt_tokens=10, cached_tokens=50)) == pytest.approx(10 * 0.015 / 1e6)


def test_cached_tokens_on_a_cloud_or_an_operators_own_model_bill_at_the_input_price(prices):
    cached = Usage(prompt_tokens=1_000_000, completion_tokens=0, cached_tokens=400_000)
    assert prices.cost("bedrock/mistral.mistral-large-2407-v1:0", cached) == 2.0  # Mistral's rule is not Bedrock's
    table = prices.with_overrides({"house": {"input_cost_per_token": 1e-6},
                                   "mistral-small-latest": {"input_cost_per_token": 2e-6},
                                   "zai-glm-5-2": {"cache_read_input_token_cost": 5e-7}})
    assert table.cost("house", cached) == 1.0
    # An operator's input price for a Mistral model: its cached tokens still bill at a tenth of it.
    assert table.cost("mistral-small-latest", cached) == pytest.approx(0.6 * 2.0 + 0.4 * 0.2)
    assert table.cost("zai-glm-5-2", cached) == pytest.approx(0.6 * 1.4 + 0.4 * 0.5)


@pytest.mark.parametrize("usage_info", [
    {"prompt_tokens_details": {"cached_tokens": 40}},
    {"prompt_token_details": {"cached_tokens": 40}},  # the spec's UsageInfo spells it both ways
    {"num_cached_tokens": 40},
])
def test_cached_tokens_are_read_where_the_spec_puts_them(usage_info):
    from sidecar.core import usage as usage_mod

    body = {"usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110, **usage_info}}
    assert usage_mod.from_body(usage_mod.CHAT, body).cached_tokens == 40


def test_reasoning_tokens_are_output_tokens_billed_once():
    from sidecar.core import usage as usage_mod

    body = {"model": "magistral-medium-2509", "usage": {
        "prompt_tokens": 100, "completion_tokens": 1000, "total_tokens": 1100,
        "completion_tokens_details": {"reasoning_tokens": 800}, "prompt_tokens_details": {"cached_tokens": 40}}}
    usage = usage_mod.from_body(usage_mod.CHAT, body)
    assert (usage.completion_tokens, usage.cached_tokens) == (1000, 40)
    assert PriceTable.load().cost("magistral-medium-latest", usage) == pytest.approx(
        (60 * 2.0 + 40 * 0.2 + 1000 * 5.0) / 1e6)


def test_reasoning_tokens_counted_beside_the_completion_are_billed_as_output_too():
    """An answer whose total_tokens shows the reasoning outside completion_tokens still pays for it."""
    from sidecar.core import usage as usage_mod

    body = {"usage": {"prompt_tokens": 100, "completion_tokens": 200, "total_tokens": 1100,
                      "completion_tokens_details": {"reasoning_tokens": 800}}}
    assert usage_mod.from_body(usage_mod.CHAT, body).completion_tokens == 1000
