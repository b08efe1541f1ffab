"""Task sets: verifiers on hand-computed cases, loading from JSONL / dataset rows, and scoring through
the one evaluation path checked against an independent decode-and-compare loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featalign.evaluation import eval_problems, score_problems, score_task
from featalign.generation import decode
from featalign.organisms.model import load_organism
from featalign.tasks import GenerationSettings, Problem, Task, TaskSet, make_verifier, organisms_task


@pytest.mark.parametrize("completion, reference, ok", [
    ("42", "42", True), (" 42\n", "42", True), ("042", "42", False), ("42 ", "42.0", False),
])
def test_exact(completion, reference, ok):
    assert make_verifier("exact")(completion, reference) is ok


@pytest.mark.parametrize("completion, reference, ok", [
    ("so the total is 1,234 dollars", "1234", True), ("$18.00", "18", True), ("no number", "3", False),
    ("3 then 4", "3", False), ("-7", "-7.0", True), ("7", "-7", False),
])
def test_numeric(completion, reference, ok):
    assert make_verifier("numeric")(completion, reference) is ok


@pytest.mark.parametrize("completion, reference, ok", [
    ("She has 3+4=7 apples.\n#### 7", "Natalia sold 48/2 = 24 clips.\n#### 7", True),
    ("#### 72\nsomething after", "72", True),
    ("The answer is 72", "#### 72", False),  # the marker is part of the format
    ("#### 71", "#### 72", False),
    ("#### 1,000", "1000", True),
    ("#### Paris", "#### Paris", True),
])
def test_final_answer_gsm8k(completion, reference, ok):
    assert make_verifier("final_answer", marker="####")(completion, reference) is ok


@pytest.mark.parametrize("completion, reference, ok", [
    ("B", "B", True), ("(C) because", "C", True), ("The answer is D.", "D", True), ("A. Paris", "0", True),
    ("Answer: b", "B", True), ("Because of A I pick", "B", False), ("", "A", False),
])
def test_multiple_choice(completion, reference, ok):
    assert make_verifier("multiple_choice")(completion, reference) is ok


def test_unknown_verifier_names_the_choices():
    with pytest.raises(ValueError, match="final_answer"):
        make_verifier("gsm8k")


def test_jsonl_rows_become_tasks_with_splits(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i), "task": "a" if i % 2 else "b",
             "split": "train" if i < 2 else "eval"} for i in range(6)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ts = TaskSet.from_jsonl(path, verifier="numeric")
    assert sorted(ts.names) == ["a", "b"]
    assert [p.prompt for p in ts["a"].problems] == ["q3", "q5"]
    assert [p.prompt for p in ts["a"].train_problems] == ["q1"]
    assert ts["b"].verify("it is 4", "4") and not ts["b"].verify("5", "4")
    no_task = tmp_path / "gsm.jsonl"
    no_task.write_text(json.dumps({"prompt": "x", "answer": "1"}) + "\n")
    assert TaskSet.from_jsonl(no_task).names == ["gsm"]


def test_bad_task_files_say_what_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="JSONL"):
        TaskSet.from_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "answer": "1"}\n')
    with pytest.raises(ValueError, match="prompt_key"):
        TaskSet.from_jsonl(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "x", "answer": "1"}\nnot json\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2"):
        TaskSet.from_jsonl(broken)


def test_task_set_file_sets_verifier_and_generation(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gsm.jsonl").write_text(
        "\n".join(json.dumps({"q": f"What is {i}+1?", "answer": f"steps...\n#### {i + 1}"}) for i in range(3)) + "\n")
    spec = tmp_path / "gsm.yaml"
    spec.write_text("path: data/gsm.jsonl\nprompt_key: q\nverifier: final_answer\n"
                    "generation: {max_new_tokens: 200, stop_strings: [\"\\n\\n\"], chat_template: true}\n")
    ts = TaskSet.load(str(spec), n_per_task=2)
    task = ts["gsm"]
    assert [p.prompt for p in task.problems] == ["What is 0+1?", "What is 1+1?"]
    assert task.verify("so #### 1.0", "steps...\n#### 1") and not task.verify("#### 2", "x\n#### 1")
    assert task.generation.max_new_tokens == 200 and task.generation.stop_strings == ("\n\n",)
    assert task.generation.chat_template is True
    assert TaskSet.load(str(spec), verifier="exact")["gsm"].verify("#### 1", "#### 1")  # a flag wins over the file
    assert not TaskSet.load(str(spec), verifier="exact")["gsm"].verify("#### 1.0", "steps...\n#### 1")
    (tmp_path / "bad.json").write_text(json.dumps({"path": "data/gsm.jsonl", "verifer": "exact"}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['verifer'\]"):
        TaskSet.load(str(tmp_path / "bad.json"))


def test_dataset_with_column_mapping():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"question": ["1+1=", "2+2="], "label": ["2", "4"]})
    ts = TaskSet.from_dataset(ds, columns={"prompt": "question", "answer": "label"}, name="arith")
    assert ts["arith"].problems == [Problem("arith", "1+1=", "2"), Problem("arith", "2+2=", "4")]


def _independent_scores(model, tok, problems, max_new, require_eos, verify, stop_strings=()):
    """One problem at a time, no batching or padding: greedy continuation, cut, verify."""
    out = []
    for p in problems:
        ids = torch.tensor([tok(p.prompt)["input_ids"]])
        new: list[int] = []
        with torch.no_grad():
            for _ in range(max_new):
                nxt = int(model(input_ids=torch.cat([ids, torch.tensor([new], dtype=torch.long)], 1)).logits[0, -1]
                          .argmax())
                new.append(nxt)
                text = tok.decode([t for t in new if t != tok.eos_token_id], skip_special_tokens=True)
                if nxt == tok.eos_token_id or any(s in text for s in stop_strings):
                    break
        ended = tok.eos_token_id in new
        text = tok.decode(new[: new.index(tok.eos_token_id)] if ended else new, skip_special_tokens=True)
        cuts = [text.index(s) for s in stop_strings if s in text]
        stopped = bool(cuts)
        text = text[: min(cuts)] if cuts else text
        out.append((ended or stopped or not require_eos) and verify(text, p.answer))
    return np.array(out)


def test_organisms_scoring_matches_an_unbatched_loop(tiny_organisms):
    model, tok = load_organism(tiny_organisms.model_dir("rl"))
    probs = eval_problems("add", 12) + eval_problems("compare", 12)
    got = score_problems(model, tok, probs, batch_size=5)
    want = np.concatenate([
        _independent_scores(model, tok, [p for p in probs if p.domain == d],
                            2 + max(len(tok(p.answer, add_special_tokens=False)["input_ids"]) for p in probs
                                    if p.domain == d), True, organisms_task(d, probs[:1]).verify)
        for d in ("add", "compare")
    ])
    assert np.array_equal(got, want)
    assert TaskSet.organisms(["add"], 12)["add"].problems == eval_problems("add", 12)


def test_stop_strings_and_budget_match_an_unbatched_loop(tiny_organisms):
    model, tok = load_organism(tiny_organisms.model_dir("base"))
    probs = eval_problems("add", 10)
    verify = make_verifier("numeric")
    # a stop string the model emits mid-answer for some prompts ('1'), a fixed budget, eos not required
    gen = GenerationSettings(max_new_tokens=4, stop_strings=("1",), batch_size=3)
    got = score_task(model, tok, Task("add", probs, verify, gen))
    want = _independent_scores(model, tok, probs, 4, False, verify, ("1",))
    assert np.array_equal(got, want)
    # the case is only a test if the stop string cuts some completions and not others
    free = decode(model, [tok(p.prompt)["input_ids"] for p in probs], 4, tok.eos_token_id, tok.pad_token_id)
    texts = tok.batch_decode(free.completion_ids_BC.tolist(), skip_special_tokens=True)
    assert 0 < sum("1" in t for t in texts) < len(texts), texts
