"""`textbook eval`: task layouts, seeded few-shot, the bundle digest, centered accuracy of real models."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.eval.config import TaskConfig
from pipeline.eval.run import bundle_of, score_checkpoint
from pipeline.eval.tasks import EvalError, Task, load_task
from tests.conftest import build_tiny_llama

WORDS = ["sun", "rain", "tree", "stone", "river", "cloud", "bird", "apple", "chair", "paper", "glass", "light"]


OBJECTS = ["lamp", "door", "boat", "coat", "cup", "bell", "road", "ship", "hat", "desk", "wall", "kite"]


def write_mc(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` four-choice items: each object has one fixed answer word, so a model can learn the map,
    while the gold word is spread evenly over the words and positions, so guessing scores chance."""
    rng = random.Random(seed)
    answer = dict(zip(OBJECTS, WORDS, strict=True))
    with open(path, "w") as f:
        for i in range(n):
            obj = OBJECTS[i % len(OBJECTS)]
            choices = [answer[obj], *rng.sample([w for w in WORDS if w != answer[obj]], 3)]
            rng.shuffle(choices)
            query = f"Question: item {i}: the {obj} goes with the\nAnswer:"
            f.write(json.dumps({"query": query, "choices": choices, "gold": choices.index(answer[obj])}) + "\n")
    return path


def eval_config(run_dir: Path, task_path: Path, *extra: str):
    tasks = json.dumps([{"name": "yesno", "path": str(task_path), "format": "mc_jsonl", "num_fewshot": 2,
                         "max_items": 200}])
    return load_config(None, [f"run_dir={run_dir}", f"eval.tasks={tasks}", "eval.batch_size=64", *extra])


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_random_model_scores_near_chance_and_a_trained_one_clearly_above(tmp_path, tiny_llama):
    task = write_mc(tmp_path / "yesno.jsonl", 300)
    cfg = eval_config(tmp_path / "run", task)
    random_result = score_checkpoint(str(tiny_llama), cfg.eval, cfg.run_dir, cfg.train.sources, cfg.train.val_fraction)
    s = random_result["tasks"]["yesno"]
    assert s["items"] == 200 and s["chance"] == pytest.approx(0.25)
    assert abs(random_result["score"]) < 0.2

    trained = train_on_answers(tmp_path / "trained", load_task(cfg.eval.tasks[0], seed=1))
    trained_result = score_checkpoint(str(trained), cfg.eval, cfg.run_dir, cfg.train.sources, cfg.train.val_fraction)
    assert trained_result["score"] > random_result["score"] + 0.4
    assert trained_result["bundle_digest"] == random_result["bundle_digest"]


def train_on_answers(path: Path, task: Task) -> Path:
    """The tiny model after 150 AdamW steps on the task's prompts, as eval shows them, with gold answers.

    The prompts carry their few-shot examples (drawn with another seed than eval's): a 2-layer model
    that only ever saw one short question does not carry the map to a question at the end of a
    three-example context, and whether it happens to depends on the random init.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_tiny_llama(path)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    texts = [context + continuations[task.items[i].gold] for i, context, continuations in task.requests(1)]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    torch.manual_seed(0)
    model.train()
    for step in range(150):
        batch = tok([texts[(step * 16 + j) % len(texts)] for j in range(16)], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    return path


def test_fewshot_draws_are_seeded_and_never_the_item_itself(tmp_path):
    task_path = write_mc(tmp_path / "t.jsonl", 40)
    config = TaskConfig(name="t", path=str(task_path), format="mc_jsonl", num_fewshot=3)
    a, b = load_task(config, seed=1), load_task(config, seed=1)
    assert a.requests(1) == b.requests(1)
    assert a.requests(1) != load_task(config, seed=2).requests(2)
    for i, (_, context, _) in enumerate(a.requests(1)):
        assert context.count("Question:") == 4
        assert context.rfind(a.items[i].question) == len(context) - len(a.items[i].question)
        assert context.count(a.items[i].question) == 1


def test_bundle_digest_changes_when_a_task_file_changes(tmp_path):
    from pipeline.io import stable_hash

    task_path = write_mc(tmp_path / "t.jsonl", 20)
    cfg = eval_config(tmp_path / "run", task_path)
    before = stable_hash(bundle_of(cfg.eval, [load_task(t, cfg.eval.seed) for t in cfg.eval.tasks]))
    write_mc(task_path, 20, seed=1)
    after = stable_hash(bundle_of(cfg.eval, [load_task(t, cfg.eval.seed) for t in cfg.eval.tasks]))
    assert before != after
    bos = cfg.eval.model_copy(update={"add_bos_token": True})
    assert bundle_of(bos, [load_task(t, bos.seed) for t in bos.tasks])["add_bos_token"] is True
    assert stable_hash(bundle_of(bos, [load_task(t, bos.seed) for t in bos.tasks])) != after


def test_mmlu_csv_with_and_without_header(tmp_path):
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "astronomy_test.csv").write_text('What orbits the Earth?,The Moon,Mars,The Sun,Venus,A\n'
                                              '"Which is a planet, by size the largest?",Pluto,Jupiter,Ceres,Io,B\n')
    (folder / "math_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\n2+2?,3,4,5,6,1\n")
    task = load_task(TaskConfig(name="mmlu", path=str(folder), format="mmlu_csv"), 0)
    assert [(i.question, i.choices[i.gold]) for i in task.items] == [
        ("What orbits the Earth?", "The Moon"), ("Which is a planet, by size the largest?", "Jupiter"),
        ("2+2?", "4")]
    context, continuations = __import__("pipeline.eval.tasks", fromlist=["render"]).render(task.items[2], "mc")
    assert context.endswith("D. 6\nAnswer:") and continuations == [" A", " B", " C", " D"]


HUB_ROWS = {
    "arc": {"question": "Which gas do plants take in?", "answerKey": "B",
            "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]}},
    "openbookqa": {"question_stem": "The sun is", "answerKey": "A",
                   "choices": {"text": ["a star", "a planet"], "label": ["A", "B"]}},
    "commonsenseqa": {"question": "Where do fish live?", "answerKey": "C",
                      "choices": {"text": ["tree", "desk", "water"], "label": ["A", "B", "C"]}},
    "hellaswag": {"activity_label": "Cooking", "ctx_a": "A man cracks an egg.", "ctx_b": "he",
                  "ctx": "A man cracks an egg. he", "endings": ["whisks it [title] well.", "eats the pan."],
                  "label": "0"},
    "piqa": {"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Paint the lid", "label": 0},
    "mmlu": {"question": "2+3?", "choices": ["4", "5", "6", "7"], "answer": 1, "subject": "math"},
}


@pytest.mark.parametrize("fmt", sorted(HUB_ROWS))
def test_hub_layouts_load_from_local_files_of_the_same_schema(tmp_path, fmt):
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text(json.dumps(HUB_ROWS[fmt]) + "\n")
    item = load_task(TaskConfig(name=fmt, path=str(path), format=fmt), 0).items[0]
    gold = {"arc": "carbon dioxide", "openbookqa": "a star", "commonsenseqa": "water",
            "hellaswag": "whisks it. well.", "piqa": "Twist the lid", "mmlu": "5"}[fmt]
    assert item.choices[item.gold] == gold
    if fmt == "hellaswag":
        assert item.cloze == "Cooking: A man cracks an egg. He"


def test_bad_task_rows_name_the_file_and_line(tmp_path):
    """1-based ``file:line``, as every other error names a row."""
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"query": "q", "choices": ["a", "b"], "gold": 1}) + "\n\n"
                    + json.dumps({"query": "q", "choices": ["a", "b"], "gold": 5}) + "\n")
    with pytest.raises(EvalError, match=r"eval task 'bad': \S*bad\.jsonl:3: not a mc_jsonl row \(ValueError: answer 5"):
        load_task(TaskConfig(name="bad", path=str(path), format="mc_jsonl"), 0)
    csv_path = tmp_path / "mmlu.csv"
    csv_path.write_text("question,A,B,C,D,answer\n2+2?,3,4,5,6,B\nhalf a row,1\n")
    with pytest.raises(EvalError, match=r"mmlu\.csv:3: expected question, four choices and an answer"):
        load_task(TaskConfig(name="m", path=str(csv_path), format="mmlu_csv"), 0)


def test_an_item_with_one_choice_is_a_one_line_error(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"query": "q", "choices": ["only"], "gold": 0}) + "\n")
    with pytest.raises(EvalError, match=r"one\.jsonl:1: 1 choice\(s\); a multiple-choice item needs at least 2"):
        load_task(TaskConfig(name="one", path=str(path), format="mc_jsonl"), 0)


def test_more_fewshot_examples_than_the_pool_holds_is_an_error(tmp_path):
    task = write_mc(tmp_path / "t.jsonl", 5)
    with pytest.raises(EvalError, match=r"eval task 't': num_fewshot=50 but the task's own items give only 4 examples"):
        load_task(TaskConfig(name="t", path=str(task), format="mc_jsonl", num_fewshot=50), 0)
    load_task(TaskConfig(name="t", path=str(task), format="mc_jsonl", num_fewshot=4), 0)


def test_two_tasks_with_one_name_are_refused():
    from pipeline.errors import ConfigError

    tasks = '[{name: t, path: a.jsonl, format: mc_jsonl}, {name: t, path: b.jsonl, format: mc_jsonl}]'
    with pytest.raises(ConfigError, match=r"eval.tasks.*two tasks are named 't'"):
        load_config(None, [f"eval.tasks={tasks}"])


def test_eval_without_tasks_writes_nothing_and_says_so(tmp_path, tiny_llama, capsys):
    assert main(["eval", f"run_dir={tmp_path / 'run'}", "--checkpoint", str(tiny_llama), "eval.tasks=[]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config key 'eval.tasks': no tasks to score" in err
    assert not (tmp_path / "run" / "eval").exists()


@pytest.mark.parametrize("name", ["phase3", "/no/such/dir", "checkpoints/./sft/x"])
def test_an_unknown_checkpoint_name_says_what_is_accepted(tmp_path, name, capsys):
    assert main(["eval", f"run_dir={tmp_path / 'run'}", "--checkpoint", name]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --checkpoint {name}: no such checkpoint: use phase1|phase2|sft (this run's), "
                   "a save_pretrained folder, or a Hub id ORG/NAME\n")


def test_cli_writes_the_result_contract_keyed_by_the_checkpoint_digest(tmp_path, tiny_llama, capsys):
    from pipeline.lineage import checkpoint_digest

    task = write_mc(tmp_path / "yesno.jsonl", 30)
    tasks = json.dumps([{"name": "yesno", "path": str(task), "format": "mc_jsonl", "max_items": 20}])
    code = main(["eval", f"run_dir={tmp_path / 'run'}", "--checkpoint", str(tiny_llama), f"eval.tasks={tasks}"])
    assert code == 0
    digest = checkpoint_digest(tiny_llama)
    out = json.loads((tmp_path / "run" / "eval" / f"{Path(tiny_llama).name}-{digest}.json").read_text())
    assert out["checkpoint_digest"] == digest
    assert set(out["tasks"]["yesno"]) >= {"accuracy", "accuracy_norm", "chance", "centered", "items"}
    assert {"score", "bpb", "bundle_digest"} <= set(out)
    assert "score (mean centered)" in capsys.readouterr().out
    assert (tmp_path / "run" / "eval" / "scores.png").read_bytes().startswith(b"\x89PNG")


@pytest.fixture
def empty_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def test_default_hub_tasks_offline_are_one_check_naming_every_task(tmp_path, tiny_llama, capsys, empty_hub_cache):
    assert main(["eval", f"run_dir={tmp_path / 'run'}", "--checkpoint", str(tiny_llama)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the Hugging Face Hub is unreachable (HF_HUB_OFFLINE=1 is set)" in err
    for name in ("arc_easy", "arc_challenge", "hellaswag", "piqa", "openbookqa", "commonsenseqa", "mmlu"):
        assert f"eval.tasks {name} (" in err
    assert "give each task a local path" in err


def test_an_unanswering_hub_is_found_before_any_task_loads(tmp_path, tiny_llama, capsys, empty_hub_cache,
                                                           monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert main(["eval", f"run_dir={tmp_path / 'run'}", "--checkpoint", str(tiny_llama),
                 "eval.tasks=[{name: piqa, hf: ybisk/piqa, format: piqa, split: validation}]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"unreachable (http://127.0.0.1:{port}: " in err and "eval.tasks piqa" in err


def test_hub_task_offline_is_one_line_naming_the_task(tmp_path, tiny_llama, capsys):
    code = main(["eval", f"run_dir={tmp_path / 'run'}", "--checkpoint", str(tiny_llama),
                 'eval.tasks=[{name: arc_easy, hf: allenai/ai2_arc, subset: ARC-Easy, format: arc}]'])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "arc_easy" in err and "local path" in err


def test_batched_left_padded_scores_equal_one_plain_forward_each(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.eval.score import encode_pair, loglikelihoods, special_prefix

    tok, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama)
    prefix = special_prefix(tok, None)
    requests = [("Question: why is the sky blue?\nAnswer:", " light scatters"), ("A", " b"),
                ("The French Revolution began in", " 1789 and changed how Europeans thought"),
                ("Photosynthesis is", " the process")]
    plain = []
    with torch.no_grad():
        for ctx, cont in requests:
            c, x = encode_pair(tok, ctx, cont, prefix)
            ids = torch.tensor([c + x])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            plain.append(float(logp[len(c) - 1:].gather(1, ids[0, len(c):, None]).sum()))
    batched = loglikelihoods(model, tok, requests, batch_size=4, max_length=512, device=torch.device("cpu"))
    assert batched == pytest.approx(plain, abs=1e-4)


def test_bos_follows_the_tokenizer_as_lm_eval_does_unless_eval_says(tiny_llama):
    """lm-eval's default puts before a context what the tokenizer itself adds: nothing for this one
    (as for SmolLM2), BOS for the run's own tokenizer (its documents were trained BOS-framed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.eval.score import encode_pair, loglikelihoods, special_prefix
    from pipeline.train.tokenizer import train_bpe
    from tests.conftest import SENTENCES

    tok, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert special_prefix(tok, None) == [] and special_prefix(tok, True) == [tok.bos_token_id]
    assert encode_pair(tok, "The sky is", " blue", [])[0] == tok("The sky is", add_special_tokens=False)["input_ids"]
    assert encode_pair(tok, "", " blue", [])[0] == [tok.bos_token_id]  # an empty context starts from BOS
    ours = train_bpe(SENTENCES * 5, 300)
    assert special_prefix(ours, None) == [ours.bos_token_id] and special_prefix(ours, False) == []
    requests = [("The sky is", " blue"), ("Water boils at", " 100 degrees")]
    default = loglikelihoods(model, tok, requests, 2, 512, torch.device("cpu"))
    with_bos = loglikelihoods(model, tok, requests, 2, 512, torch.device("cpu"), add_bos_token=True)
    assert default != pytest.approx(with_bos, abs=1e-4)
