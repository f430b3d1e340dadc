# %% [markdown]
# # 12 · Do you really need post-training? Prompting, RAG, continual pretraining, post-training
#
# Every lesson so far shows *how* to post-train. A practitioner's first question is *whether* to. The usual
# answer is a table of rules of thumb:
#
# | use case | method | what people say |
# |---|---|---|
# | follow a few instructions ("do not discuss X") | a system prompt | simple, but brittle |
# | answer from a knowledge base that changes | retrieval (RAG) | adapts at once to a changed store |
# | knowledge never seen in pretraining | continual pretraining, then post-training | injects knowledge at scale |
# | follow 20+ instructions tightly; SQL, tools | post-training | reliable, but may degrade other domains |
#
# This lesson turns each row into a measurement on our world and our 0.93M-parameter model, with what each
# method costs (seconds on this CPU) and what it breaks elsewhere (the report card's old domains). One
# command does it all, `python -m minipost.lab` (minipost/lab.py); this lesson runs it (a finished run is
# reused) and reads the results. Published studies on large models give the hypotheses: Ovadia et al. 2023
# (arXiv:2312.05934: RAG beats unsupervised fine-tuning for new knowledge), Gekhman et al. 2024
# (arXiv:2405.05904: fine-tuning on new facts raises wrong answers on known ones), Allen-Zhu & Li 2023
# (arXiv:2309.14316: a fact is extractable only when pretraining states it in several phrasings).
#
# It starts from the pipeline's checkpoints (`python -m minipost.pipeline` first). Set MINIPOST_SMOKE=1
# for a short version on random weights (the test suite runs it that way): the code runs, nothing is learned.

# %%
import json
from pathlib import Path

from minipost.lab import Config, run_lab
from minipost.world import lab as world_lab

from _setup import SMOKE, ensure_world, out_dir, start_checkpoint  # noqa: E402  (tutorials/_setup.py)

OUT = out_dir("12_do_you_need_post_training")
ensure_world()
if SMOKE:  # random weights standing in for the pipeline's pretrain, sft and dpo checkpoints
    import shutil
    start = start_checkpoint(OUT, [])
    for stage in ("pretrain", "sft", "dpo"):
        (OUT / "pipeline" / stage).mkdir(parents=True, exist_ok=True)
        shutil.copy(start, OUT / "pipeline" / stage / "model.pt")
PIPELINE = str(OUT / "pipeline") if SMOKE else "runs/pipeline"
LAB_OUT = str(OUT / "lab") if SMOKE else "runs/lab"

# %% [markdown]
# ## 1. The lab's world: four new domains (minipost/world/lab.py)
# They live in data/lab/, drawn from their own random streams, so the pipeline's data is byte for byte
# what it was. One row of each:

# %%
for name in ("policy_eval", "update_docs", "region_pretrain", "context_sft"):
    row = world_lab.load(name)[0]
    print(f"--- {name}:", json.dumps(row, ensure_ascii=False)[:400])

# %% [markdown]
# - **policies**: a system prompt lists 1 to 30 topics not to discuss; a listed topic gets exactly the
#   refusal, an unlisted one a sentence naming it. Evaluation uses only topics no training row mentions.
# - **updates**: two rounds of news, each changing a quarter of the 144 knowledge facts (a capital moves).
# - **region**: 24 new countries the base corpus never mentions, with their own corpus; half their facts
#   are in no chat data at all.
# - **context**: "Context: <articles> Question: ..." answered from the articles, which often contradict
#   pretraining. RAG needs this skill: the pipeline's chat model never saw a passage in its prompt.

# %% [markdown]
# ## 2. Run the comparison
# Each run starts from a pipeline checkpoint: policy SFT from the SFT model (then DPO on policy pairs);
# the RAG reader, the update SFTs and continued pretraining from the DPO model; the region's runs from the
# base model, each followed by the pipeline's own SFT recipe. A fresh run took 11-25 minutes on the 2-core Xeon
# (README); rerunning reuses what finished. The longest run is the reader (571 s): 1200 steps on 38,500 passages, as
# the nano model learns to copy a name from its context only after some 500 steps (watch `loss` in
# runs/lab/updates/reader/metrics.jsonl: flat near 0.7, then down to 0.1).

# %%
flags = dict(max_steps=1, eval_limit=1, parts="policies,updates,region") if SMOKE else {}
cfg = Config(out=LAB_OUT, pipeline=PIPELINE, **flags)
result = run_lab(cfg)

# %% [markdown]
# ## 3. Prompting against post-training: "do not discuss X"
# Two rates per list length: refusing a listed topic, and answering an unlisted one (a model that refuses
# everything gets the first right and the second wrong). The prompted models were never shown a system
# turn; the policy models were trained on lists of other topics.

# %%
from minipost.world.policies import LIST_LENGTHS  # noqa: E402

for label, cells in result["policies"]["curves"].items():
    for trig in ("plain", "trigger"):
        row = "  ".join(f"{n:>2}: {cells[f'{n}|{trig}|listed']['acc']:3.0f}/{cells[f'{n}|{trig}|unlisted']['acc']:3.0f}"
                        for n in LIST_LENGTHS if f"{n}|{trig}|listed" in cells)
        print(f"{label:18s} {trig:7s} refuse listed / answer unlisted, by list length:  {row}")

# %% [markdown]
# ## 4. Changing knowledge: RAG against fine-tuning
# After each update: accuracy on the changed facts, on the unchanged ones, and "known facts now wrong":
# of the facts the stale model answered right and no update touched, the share a method now gets wrong
# (Gekhman et al.'s question). The update cost is the training seconds, or for RAG the seconds to index
# the updated store. RAG is measured twice: with the top passage alone and with the top 3. Retrieval finds
# the right article either way; compare what the small reader does with two extra, wrong articles.

# %%
for k, res in result["updates"]["after"].items():
    recall = ", ".join(f"@{n} {r['acc']:.0f}%" for n, r in result["updates"]["recall"][k].items())
    print(f"after update {k} (retrieval recall {recall})")
    for label, r in res.items():
        print(f"  {label:36s} changed {r['changed']['acc']:5.1f}%  unchanged {r['unchanged']['acc']:5.1f}%  "
              f"known now wrong {r['known_now_wrong']['acc']:5.1f}%")

# %% [markdown]
# ## 5. A new region: continual pretraining + SFT, SFT alone, RAG
# Held-out facts appear in no chat data: only continued pretraining (or retrieval) can supply them. The
# card columns are the old domains, against the pipeline's SFT model: what each method made the model forget.

# %%
g = result["region"]
print("pipeline SFT card:", {c: round(v, 3) for c, v in g["pipeline_sft_card"].items()})
for label, r in g["methods"].items():
    print(f"{label:28s} held-out new facts {r['held_out']['acc']:5.1f}%  taught {r['taught']['acc']:5.1f}%  "
          f"card {({c: round(v, 3) for c, v in r['card'].items()})}")

# %% [markdown]
# ## 6. The table
# OUT/lab.md holds it, OUT/lab.png the figure. The README's "Do you need post-training?" section has the
# full run's numbers, the machine and the command.

# %%
print((Path(LAB_OUT) / "lab.md").read_text(encoding="utf-8"))
print("figure:", Path(LAB_OUT) / "lab.png")
