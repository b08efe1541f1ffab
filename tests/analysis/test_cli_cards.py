import json

import pytest
import torch

from featalign.analysis.cards import card_examples, render_card, write_cards


def test_render_card_escapes_and_lists():
    ex = {"base": {"top": [(1.5, "add 1<2", "+", "3=")], "acts": [1.5, 0.2]}, "rl": {"top": [], "acts": []}}
    page = render_card(7, ex, {"class": "rl-only", "mas": {"base": 0.1, "rl": 0.9}}, note="why <b>")
    assert "add 1&lt;2<span class='tok'>+</span>3=" in page and "why &lt;b&gt;" in page
    assert "never fires" in page and "data:image/png;base64," in page and "rl: 0.9" in page


def test_cards_on_tiny_organisms(tiny_organisms, tmp_path):
    import itertools

    from featalign.activations import TaskSuiteSource
    from featalign.organisms.model import load_organism
    from tests.analysis.helpers import hand_crosscoder

    trio = tiny_organisms.default_trio()
    dirs = {k: str(trio[k]) for k in ("base", "rl")}
    model, tok = load_organism(dirs["rl"])  # plain HF: the reference does not go through featalign.models
    D = model.config.hidden_size
    cc = hand_crosscoder(torch.randn(6, 2, D, generator=torch.Generator().manual_seed(0)), models=("base", "rl"),
                         hook="blocks.0.hook_resid_post")
    ex = card_examples(cc, dirs, [2, 4], n_seqs=32, top_n=3, progress=False)
    # independent reference: the largest activation of latent 4 in the rl model over the same text
    seqs = list(itertools.islice(TaskSuiteSource(split="eval", seed=0).sequences(tok), 32))
    T = max(map(len, seqs))
    ids = torch.tensor([q + [tok.pad_token_id] * (T - len(q)) for q in seqs])
    mask = torch.tensor([[0] + [1] * (len(q) - 1) + [0] * (T - len(q)) for q in seqs])
    with torch.no_grad():
        acts = model(input_ids=ids, output_hidden_states=True).hidden_states[1]  # = blocks.0.hook_resid_post
    f = cc.encode_as(acts.reshape(-1, 1, D), 1)[:, 4].view(ids.shape) * mask
    assert ex[4]["rl"]["top"][0][0] == pytest.approx(f.max().item(), rel=1e-5)
    assert len(ex[4]["rl"]["acts"]) == int((f > 0).sum())
    index = write_cards(tmp_path, [2, 4], ex, {2: {"class": "shared"}, 4: {"class": "rl-only"}}, {4: "test"})
    assert "cards/4.html" in index.read_text() and (tmp_path / "cards" / "2.html").exists()
    with pytest.raises(ValueError, match="must name the crosscoder's models"):
        card_examples(cc, {"rl": dirs["rl"], "base": dirs["base"]}, [1])


def test_analyze_cli_end_to_end(tiny_organisms, tmp_path, capsys):
    from featalign.analysis.cli import main

    args = ["--organisms-dir", str(tiny_organisms.root), "--organisms-preset", "tiny", "--out", str(tmp_path / "rep"),
            "--n-tokens", "4000", "--eval-tokens", "1000", "--n-latents", "64", "--k", "4", "--steps", "30",
            "--batch-size", "256", "--top-k", "5", "--n-null", "3", "--n-cards", "2",
            "--progress", "false", "--gradient", "true"]
    rep = main(args)
    out = tmp_path / "rep"
    saved = json.loads((out / "report.json").read_text())
    assert saved["q1_specific_latents"]["pairwise"]["control-same"]["tuned_only"]["count"] == 0
    assert set(saved["q2_drift"]) == {"sft", "rl", "sft_vs_rl", "sft_vs_rl_topk_entry"} and len(saved["q2_drift"]["rl"]["overlap"]) == 4
    # Q3 ran on the tiny RL model (default --min-samples): every out-of-domain task, from the build's record, and
    # its selection equals the explicit-loop reference on the same trio crosscoder
    from featalign.crosscoder import Crosscoder
    from featalign.evaluation import eval_problems
    from tests.analysis.helpers import reference_success_selection

    org = tiny_organisms
    dom = org.config.post_train_domains[0]
    correct = {n: json.loads((org.eval_dir / f"{n}.json").read_text())["correct"] for n in ("base", f"rl-{dom}")}
    tasks = {d: (eval_problems(d, org.config.eval_samples), correct["base"][d], correct[f"rl-{dom}"][d])
             for d in org.config.pretrain_domains if d != dom}
    ref = reference_success_selection(Crosscoder.load(out / "crosscoders" / "trio"), org.base_dir,
                                      org.model_dir("rl"), tasks)
    q3 = saved["q3_success_features"]
    assert q3["tasks"] == list(ref["n_samples"]) and len(q3["tasks"]) >= 2 and q3["n_samples"] == ref["n_samples"]
    assert sorted(q3["skipped"]) == ref["skipped"]
    assert q3["per_task_sizes"] == {t: len(v) for t, v in ref["per_task"].items()}
    assert q3["features"] == ref["features"] and q3["majority_features"] == ref["majority"]
    assert set(q3["gradient"]) == set(q3["tasks"])  # the gradient score ran on every task used
    md = (out / "report.md").read_text()
    assert "## Q1." in md and "## Q2." in md and "## Q3." in md
    assert (out / "index.html").exists() and (out / "figures" / "drift.png").exists()
    assert {"ternary.png", "nrn_hist.png", "mas_hist.png"} <= set(saved["figures"])
    # the cards include, per tuned model, the alive latents with its largest decoder-norm share
    from featalign.analysis.attribution import attribute
    from featalign.crosscoder import Crosscoder

    from featalign.activations import ActivationStore

    att = attribute(Crosscoder.load(out / "crosscoders" / "trio"), ActivationStore(out / "activations" / "eval").read())
    alive = [i for i in range(len(att.classes)) if float(att.enc["firing_rate"][i]) > 0]
    carded = {int(k) for k in json.loads((out / "cards.json").read_text())}
    for m in (1, 2):  # rl, sft
        top = sorted(alive, key=lambda i: -float(att.mas_LM[i, m]))[:2]
        assert set(top) <= carded
    # a rerun reuses the cached activations and crosscoders
    rep2 = main(args)
    assert rep2["q1_specific_latents"]["trio"] == rep["q1_specific_latents"]["trio"]
    assert rep2["timings_s"]["activations"] < 5


def test_analyze_refuses_mismatched_crosscoder(tiny_organisms, tmp_path):
    from featalign.analysis.cli import main
    from tests.analysis.helpers import hand_crosscoder

    cc = hand_crosscoder(torch.randn(4, 2, 8), models=("base", "rl"), hook="blocks.0.hook_resid_post")
    cc.save(tmp_path / "cc")
    with pytest.raises(ValueError, match="do not match the crosscoder"):
        main(["--organisms-dir", str(tiny_organisms.root), "--out", str(tmp_path / "rep"), "--crosscoder",
              str(tmp_path / "cc"), "--stages", "attribution", "--n-tokens", "500", "--eval-tokens", "300",
              "--progress", "false"])
    with pytest.raises(ValueError, match="unknown stage"):
        main(["--stages", "attribution,nope"])


def test_analyze_drift_both_modes(tiny_organisms, tmp_path):
    from featalign.analysis.cli import main

    rep = main(["--organisms-dir", str(tiny_organisms.root), "--out", str(tmp_path / "rep"), "--stages", "attribution,drift",
                "--drift-mode", "both", "--n-tokens", "3000", "--eval-tokens", "800", "--n-latents", "48", "--k", "4",
                "--steps", "20", "--batch-size", "256", "--top-k", "5", "--progress", "false"])
    q2 = rep["q2_drift"]
    assert {q2["sft"]["mode"], q2["sft-pairwise"]["mode"]} == {"joint", "pairwise"}
    # the pairwise overlaps, recomputed by brute-force matching from the per-checkpoint crosscoders
    from featalign.activations import ActivationStore
    from featalign.crosscoder import Crosscoder
    from tests.analysis.helpers import reference_pairwise_overlap

    out = tmp_path / "rep"
    store = ActivationStore(out / "activations" / "train")
    x = store.read()[:800]  # --eval-tokens rows: where drift counts a latent alive
    ccs = [Crosscoder.load(out / "crosscoders" / f"drift-rl-pair-{i}") for i in range(1, 6)]
    cols = [[store.models.index(m if m in store.models else m.split("@")[0]) for m in cc.cfg.models] for cc in ccs]
    ref = reference_pairwise_overlap(ccs, [x[:, c] for c in cols], 5)
    assert len(ref) == 4 and q2["rl-pairwise"]["overlap"] == pytest.approx(ref)
    assert "q3_success_features" not in rep and "pairwise" not in rep["q1_specific_latents"]


SMALL = ["--n-tokens", "2000", "--eval-tokens", "600", "--n-latents", "32", "--k", "4", "--batch-size", "256",
         "--stages", "attribution", "--progress", "false"]


def test_analyze_rerun_with_other_settings_retrains_and_reports_them(tiny_organisms, tmp_path):
    """A rerun in the same --out with other --steps/--lr/--n-tokens must not reuse the old crosscoders."""
    from safetensors.torch import load_file

    from featalign.analysis.cli import main

    base = ["--organisms-dir", str(tiny_organisms.root)] + SMALL
    main(base + ["--out", str(tmp_path / "rep"), "--steps", "10"])
    changed = ["--steps", "25", "--lr", "0.002", "--n-tokens", "2500"]
    with pytest.warns(UserWarning, match=r"trainer\.lr: 0.001 -> 0.002; trainer\.steps: 10 -> 25.*training activations"):
        rep = main(base + ["--out", str(tmp_path / "rep")] + changed)
    fresh = main(base + ["--out", str(tmp_path / "fresh")] + changed)  # the reference: never saw the old settings
    a = load_file(str(tmp_path / "rep" / "crosscoders" / "trio" / "crosscoder.safetensors"))
    b = load_file(str(tmp_path / "fresh" / "crosscoders" / "trio" / "crosscoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rep["q1_specific_latents"]["trio"] == fresh["q1_specific_latents"]["trio"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "25 steps, lr 0.002" in md and "trained on 2500 tokens per model" in md


def test_analyze_crosscoder_dir_uses_its_own_hook_and_refuses_another(tiny_organisms, tmp_path):
    from featalign.analysis.cli import main
    from tests.analysis.helpers import hand_crosscoder

    hook = "blocks.1.hook_resid_post"  # not the middle block (blocks.0 for the 2-layer tiny organisms)
    cc = hand_crosscoder(torch.randn(16, 3, 32, generator=torch.Generator().manual_seed(0)),
                         models=("base", "rl", "sft"), hook=hook)
    cc.save(tmp_path / "cc")
    base = ["--organisms-dir", str(tiny_organisms.root), "--crosscoder", str(tmp_path / "cc")] + SMALL
    with pytest.raises(ValueError, match=f"trained on hook '{hook}', not --hook 'blocks.0.hook_resid_post'"):
        main(base + ["--out", str(tmp_path / "bad"), "--hook", "blocks.0.hook_resid_post"])
    assert not (tmp_path / "bad").exists()
    rep = main(base + ["--out", str(tmp_path / "rep")])  # --hook auto (the default): the crosscoder's, unmeasured
    assert rep["hook"] == hook and "hook_choice" not in rep
    assert not (tmp_path / "rep" / "activations" / "layers").exists()
    from featalign.activations import ActivationStore

    assert ActivationStore(tmp_path / "rep" / "activations" / "eval").hooks == (hook,)  # the crosscoder's layer
    assert f"trio loaded from `{tmp_path / 'cc'}`" in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(ValueError, match=r"--hook blocks.9.hook_resid_post: the models have layers 0..1"):
        main(["--organisms-dir", str(tiny_organisms.root), "--hook", "blocks.9.hook_resid_post",
              "--out", str(tmp_path / "bad9")] + SMALL)
    assert not (tmp_path / "bad9").exists()


def test_report_marks_clopper_pearson_intervals():
    from featalign.analysis.stages import CP_MARK, format_interval as _ci

    boot = {"count": 5, "low": 2.0, "high": 9.0, "method": "bootstrap"}
    exact = {"count": 0, "low": 0.0, "high": 3.2, "method": "clopper-pearson"}
    assert _ci(boot) == "5 [2, 9]" and _ci(exact) == f"0 [0, 3]{CP_MARK}"
