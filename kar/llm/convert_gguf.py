"""Dequantize the embedded model's GGUF into a plain Hugging Face folder vLLM can load.

Run by ``kar.llm.embedded.ensure_embedded_model`` with the vLLM venv's python (transformers < 5.20 there):
``python convert_gguf.py SRC_DIR GGUF_NAME OUT_DIR``. transformers refuses to save a GGUF-quantized model, so
the dequantized weights are copied into a plain model built from the same config; one greedy answer checks the
result before it is saved. Never imported by the project's own environment.
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

src_dir, gguf_name, out_dir = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
quantized = AutoModelForCausalLM.from_pretrained(
    src_dir,
    gguf_file=gguf_name,
    quantization_config=GgufConfig(gguf_file=gguf_name, dequantize=True),
    dtype=torch.float32,
)
config = quantized.config
if hasattr(config, "quantization_config"):
    del config.quantization_config
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
model.tie_weights()
missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
if missing or unexpected:
    sys.exit(f"weights do not match the config: missing={missing} unexpected={unexpected}")
if not tokenizer.chat_template:
    sys.exit("the GGUF has no chat template; vLLM's chat endpoint would use a wrong one")
model.eval()
messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
with torch.no_grad():
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
print("sanity answer:", repr(answer))
model.save_pretrained(out_dir, safe_serialization=True)
tokenizer.save_pretrained(out_dir)
print("saved", out_dir)
