"""Shared test helpers: small problem files, the tiny trainer's flags, the CLI, and a stand-in for a hub model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# DeepSeek-Coder-Instruct's chat template, as published with its tokenizer (tokenizer_config.json,
# quoted in many projects, e.g. llama.cpp's chat-template tests). Rendered with
# add_generation_prompt=True it ends in "### Response:\n".
DEEPSEEK_CHAT_TEMPLATE = """{% if not add_generation_prompt is defined %}
{% set add_generation_prompt = false %}
{% endif %}
{%- set ns = namespace(found=false) -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}
        {%- set ns.found = true -%}
    {%- endif -%}
{%- endfor -%}
{{bos_token}}{%- if not ns.found -%}
{{'You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you only answer questions related to computer science. For politically sensitive questions, security and privacy issues, and other non-computer science questions, you will refuse to answer\\n'}}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
{{ message['content'] }}
    {%- else %}
        {%- if message['role'] == 'user' %}
{{'### Instruction:\\n' + message['content'] + '\\n'}}
        {%- else %}
{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}
{{'### Response:'}}
{% endif %}"""
DEEPSEEK_SYSTEM_LINE = "You are an AI programming assistant, utilizing the Deepseek Coder model"
BOS, EOT, PAD = "<｜begin▁of▁sentence｜>", "<|EOT|>", "<｜end▁of▁sentence｜>"


def write_problems(path: Path, n: int = 6) -> Path:
    probs = []
    for i in range(n):
        probs.append({"problem_id": i, "question": f"Read an integer n and print n + {i}.",
                      "canonical_solution": f"n = int(input())\nif n > 0:\n    print(n + {i})\nelse:\n    print(n + {i})\n",
                      "fn_name": None, "inputs": ["1\n", "-2\n", "5\n"], "outputs": [f"{1 + i}\n", f"{i - 2}\n", f"{5 + i}\n"],
                      "starter_code": "", "difficulty": ["introductory", "interview", "competition"][i % 3]})
        probs.append({"problem_id": 100 + i, "question": f"Return x times {i}.",
                      "canonical_solution": f"def mul(x):\n    for _ in range(1):\n        pass\n    return x * {i}\n",
                      "fn_name": "mul", "inputs": [[1], [2], [-3]], "outputs": [i, 2 * i, -3 * i],
                      "starter_code": "def mul(x):\n", "difficulty": "introductory"})
    path.write_text(json.dumps(probs))
    return path


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    data = write_problems(tmp_path / "probs.json")
    return ["--model", "tiny", "--data", str(data), "--test-data", str(data), "--out", str(tmp_path / "run"),
            "--sft-steps", "10", "--max-new-tokens", "48", "--problems-per-step", "3", "--samples-per-problem", "2",
            "--minibatch-size", "3", "--eval-samples", "2", "--seed", "1", *extra]


def run_cli(args: list[str], script: str = "stepcoder.py", **kwargs):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, **kwargs)


def build_deepseek_standin(directory: Path, problems_file: Path, train_steps: int = 120) -> Path:
    """A local directory that loads like deepseek-ai/deepseek-coder-*-instruct: a small Llama, a byte-level
    BPE tokenizer with its special tokens (BOS, <|EOT|> as EOS, a distinct pad) and its chat template.
    Its weights are trained briefly on the problems' chat prompts + solution + closing fence + <|EOT|>,
    so that it writes programs and closes the fence as an instruct model does."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    import curriculum
    problems = curriculum.load_problems(problems_file)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [DEEPSEEK_CHAT_TEMPLATE] + [p.question + "\n" + p.canonical_solution + "```" for p in problems]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=[BOS, PAD, EOT],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bpe.token_to_id(BOS))])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOT, pad_token=PAD)
    tok.chat_template = DEEPSEEK_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    texts = [curriculum.build_prompt(p, tok) + p.canonical_solution + "```" + EOT for p in problems]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def write_standin_problems(path: Path) -> Path:
    """Four short stdin problems with a conditional (so CCCS has a completion stage)."""
    import contextlib
    import io
    probs = []
    for i, (question, solution) in enumerate([
            ("Read an integer n and print n + 1.", "n = int(input())\nif n > 0:\n    print(n + 1)\nelse:\n    print(n + 1)\n"),
            ("Read an integer n and print twice n.", "n = int(input())\nif n != 0:\n    print(2 * n)\nelse:\n    print(0)\n"),
            ("Read an integer n and print its square.", "n = int(input())\nif n < 0:\n    n = -n\nprint(n * n)\n"),
            ("Read an integer n and print n - 1.", "n = int(input())\nif n > 5:\n    print(n - 1)\nelse:\n    print(n - 1)\n")]):
        ins = ["3\n", "-2\n", "7\n"]
        outs = []
        for x in ins:
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(solution, {"input": lambda x=x: x.strip()})
            outs.append(buffer.getvalue())
        probs.append({"problem_id": i, "question": question, "canonical_solution": solution, "fn_name": None,
                      "inputs": ins, "outputs": outs, "starter_code": "", "difficulty": "introductory"})
    path.write_text(json.dumps(probs))
    return path


@pytest.fixture(scope="session")
def standin_problems(tmp_path_factory) -> Path:
    return write_standin_problems(tmp_path_factory.mktemp("standin-data") / "problems.json")


@pytest.fixture(scope="session")
def deepseek_standin(tmp_path_factory, standin_problems) -> Path:
    return build_deepseek_standin(tmp_path_factory.mktemp("deepseek-standin"), standin_problems)
