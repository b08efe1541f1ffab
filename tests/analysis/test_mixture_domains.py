"""The organisms' text mixture follows the build's pretraining domains: a structured build is read on its own
domains, the default build on the ten default ones with the fingerprint its stores were cached under."""

from __future__ import annotations

from types import SimpleNamespace

from featalign.activations import DomainMixtureSource
from featalign.analysis.inputs import mixture_domains, text_sources
from featalign.organisms import preset_config
from featalign.organisms.tasks import STRUCTURED_DOMAINS


def _org(preset: str):
    return SimpleNamespace(config=preset_config(preset))


def test_structured_organisms_are_read_on_their_own_domains():
    cfg = SimpleNamespace(seed=3, n_tokens=500, eval_tokens=200)
    train, held_out = text_sources(cfg, None, mixture_domains(_org("structured")))
    assert train.domains == held_out.domains == tuple(preset_config("structured").pretrain_domains)
    assert set(train.domains) <= set(STRUCTURED_DOMAINS) and "add" not in train.domains
    from featalign.organisms.tasks import sample_problems
    from featalign.organisms.tokenizer import build_tokenizer

    tok = build_tokenizer()
    prefixes = {sample_problems(d, 1, "train", 0)[0].prompt.split()[0] for d in train.domains}  # 'cl', 'hi', ...
    seqs = train.sequences(tok)
    heads = {tok.decode(next(seqs)[1:]).split()[0] for _ in range(40)}  # after <bos>: the prompt's domain prefix
    assert heads <= prefixes and len(heads) > 1, (heads, prefixes)


def test_default_organisms_keep_the_default_source_and_its_fingerprint():
    assert (
        mixture_domains(_org("default")) is None
        and mixture_domains(_org("tiny")) is None
        and mixture_domains(None) is None
    )
    cfg = SimpleNamespace(seed=0, n_tokens=400, eval_tokens=100)
    train, _ = text_sources(cfg, None, mixture_domains(_org("default")))
    assert train.fingerprint() == DomainMixtureSource("train", 0, 400).fingerprint()
