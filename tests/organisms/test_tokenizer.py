import pytest
from transformers import AutoTokenizer

from featalign.organisms.tasks import DOMAINS, sample_problems
from featalign.organisms.tokenizer import CHARS, build_tokenizer, save_tokenizer


def _texts():
    return [p.prompt + p.answer for d in DOMAINS for p in sample_problems(d, 20, "eval", 0)] + [CHARS]


def test_round_trip_direct():
    tok = build_tokenizer()
    for t in _texts():
        ids = tok(t)["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == len(t) + 1  # one token per char
        assert tok.decode(ids, skip_special_tokens=True) == t


def test_round_trip_through_autotokenizer(tmp_path):
    save_tokenizer(tmp_path)
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    for t in _texts():
        ids = auto(t)["input_ids"]
        assert ids == build_tokenizer()(t)["input_ids"]
        assert auto.decode(ids, skip_special_tokens=True) == t


def test_spaces_survive():
    tok = build_tokenizer()
    assert tok.decode(tok("max 3 9 4=9")["input_ids"], skip_special_tokens=True) == "max 3 9 4=9"


@pytest.mark.parametrize("ch", list("ABZ~"))
def test_unknown_chars_map_to_unk(ch):
    tok = build_tokenizer()
    assert tok(ch, add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
