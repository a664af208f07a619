#!/usr/bin/env python3
"""Goldens for perceptio's chat-template renderer (src/models/chat_template.rs), made with the
renderer Sa2VA's Qwen-VL `predict_forward` goes through: transformers 4.57's
`processor.apply_chat_template` -> `render_jinja_template` (Jinja2, trim_blocks + lstrip_blocks,
loop controls, its own `tojson`, `raise_exception`; the tokenizer's special tokens as variables).
Manual; never in CI.

    python3 -m venv /tmp/venv-tf457
    /tmp/venv-tf457/bin/pip install "transformers==4.57.1" jinja2     # tested: jinja2 3.1.6
    /tmp/venv-tf457/bin/python tools/gen_chat_template_goldens.py

Templates: the two fixture checkpoints' own chat_template.jinja (Qwen2.5-VL's is the real one;
Qwen3-VL's the image/text subset), plus fixtures/chat_template/qwen3_vl_style.jinja (the
structure of Qwen3-VL-Instruct's template: tools + tojson, reversed-message namespace scan,
startswith/split/lstrip, tool turns, raise_exception) and blocks.jinja (whitespace control of
indented block tags, break/continue, dict.items(), filters, tojson with indent and non-ASCII).
"""
import json
import pathlib

import transformers
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
OUT = FIX / "chat_template" / "goldens.json"

TEMPLATES = {
    "qwen25vl": FIX / "sa2va-qwen25vl" / "chat_template.jinja",
    "qwen3vl": FIX / "sa2va-qwen3vl" / "chat_template.jinja",
    "qwen3_vl_style": FIX / "chat_template" / "qwen3_vl_style.jinja",
    "blocks": FIX / "chat_template" / "blocks.jinja",
}
SPECIALS = {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}


def sa2va_turn(text):
    # predict_forward's single-image message (the image's value is a PIL image there; templates
    # only test that the key is present)
    return [{"role": "user", "content": [{"type": "image", "image": "image"},
                                         {"type": "text", "text": text}]}]


CONVERSATIONS = {
    "sa2va_image": sa2va_turn("Please segment the cat in this image.\n"),
    "sa2va_unicode": sa2va_turn("  Où est le chat ?\t猫はどこ？ 🐈\n\n"),
    "text_only": [{"role": "user", "content": [{"type": "text", "text": "Hello there."}]}],
    "string_content": [{"role": "user", "content": "A plain string turn."}],
    "with_system": [
        {"role": "system", "content": "You segment things."},
        {"role": "user", "content": [{"type": "image", "image": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "<think>\nA cat, probably.\n</think>\n\nIt is a cat [SEG]."},
        {"role": "user", "content": "And its ear?"},
    ],
    "two_images_video": [{"role": "user", "content": [
        {"type": "image", "image": "a"}, {"type": "video", "video": "v"},
        {"type": "image", "image": "b"}, {"type": "text", "text": "Compare."}]}],
    "tools_turns": [
        {"role": "user", "content": "Find the weather."},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "arguments": {"city": "Zürich", "unit": "°C"}}]},
        {"role": "tool", "content": "{\"t\": 3}"},
        {"role": "tool", "content": "<b>ok</b>"},
    ],
    "blocks_roles": [
        {"role": "user", "content": "  padded  ", "name": "ünï"},
        {"role": "skip", "content": "never shown"},
        {"role": "assistant", "content": "done", "score": 0.5},
        {"role": "stop", "content": "x"},
        {"role": "user", "content": "after stop"},
    ],
    "bad_role": [{"role": "narrator", "content": "?"}],
}
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather <now> & later",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]

CASES = [
    ("qwen25vl", "sa2va_image", {}), ("qwen25vl", "sa2va_unicode", {}), ("qwen25vl", "text_only", {}),
    ("qwen25vl", "with_system", {}), ("qwen25vl", "two_images_video", {"add_vision_id": True}),
    ("qwen25vl", "sa2va_image", {"add_generation_prompt": False}),
    ("qwen3vl", "sa2va_image", {}), ("qwen3vl", "sa2va_unicode", {}), ("qwen3vl", "string_content", {}),
    ("qwen3vl", "two_images_video", {"add_vision_id": True}),
    ("qwen3_vl_style", "sa2va_image", {}), ("qwen3_vl_style", "with_system", {}),
    ("qwen3_vl_style", "two_images_video", {"add_vision_id": True}),
    ("qwen3_vl_style", "tools_turns", {"tools": TOOLS}),
    ("qwen3_vl_style", "with_system", {"tools": TOOLS}),
    ("qwen3_vl_style", "bad_role", {}),
    ("blocks", "blocks_roles", {}), ("blocks", "blocks_roles", {"add_generation_prompt": False}),
]


def main():
    cases = []
    for tname, cname, kw in CASES:
        kw = dict(kw)
        agp = kw.pop("add_generation_prompt", True)
        tools = kw.pop("tools", None)
        source = TEMPLATES[tname].read_text(encoding="utf-8")
        case = {"template": str(TEMPLATES[tname].relative_to(ROOT)), "conversation": cname,
                "messages": CONVERSATIONS[cname], "add_generation_prompt": agp, "tools": tools,
                "kwargs": kw}
        try:
            prompts, _ = render_jinja_template(conversations=[CONVERSATIONS[cname]], chat_template=source,
                                               tools=tools, add_generation_prompt=agp, **kw, **SPECIALS)
            case["expected"] = prompts[0]
        except Exception as e:  # noqa: BLE001 - the golden records that the reference refuses
            case["error"] = f"{type(e).__name__}: {e}"
        cases.append(case)
    OUT.write_text(json.dumps({"transformers": transformers.__version__, "specials": SPECIALS,
                               "cases": cases}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
