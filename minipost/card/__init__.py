"""The eval suite and the report card: what each stage gained, and what it cost elsewhere.

Every column is measured on held-out data that no training split contains (tests/test_world.py enforces it);
the world's registry (minipost/world/registry.py) decides which domains are columns:
- **probes** (PROBE_DOMAINS; base-model style, no chat template): greedy completion of "The capital of
  Veloria is" or "37 + 48 =", scored on the text up to the first full stop or line break (world.check_probe).
  They show what pretraining stored.
- **chat columns** (SCORED_DOMAINS): greedy answers to each domain's eval prompts, in the chat template,
  scored by the world's checkers; `format` is the share of answers that end with the stop token <|end|>.
- **refusals**: `refuse` is the refusal rate on forbidden topics (higher is better); `over_refusal` is the
  refusal rate on benign prompts of every domain (lower is better).
- **val_loss**: next-token loss on held-out pretraining text (what the model forgot about its corpus).
- **pref_acc**: held-out preference accuracy of the implicit DPO reward
  r(x, y) = log pi(y|x) - log pi_ref(y|x) against a reference checkpoint (`--ref`, the SFT model in the
  pipeline): the share of pairs with r(chosen) > r(rejected), strictly.
- **win_rate**: the judge's column, the share of chat eval prompts on which a reward model (`--judge`, the
  pipeline's reward_model stage) scores this checkpoint's answer above a baseline checkpoint's answer (the SFT
  model's in the pipeline; a tie, the same answer, counts one half). The exact checkers say what is right; the
  judge says what a learned preference likes, which is what LLM judges and arenas measure (tutorial 10).
- **judge_agree**: where the checkers pass one of the two answers (this checkpoint's, the baseline's) and
  fail the other, the share of those prompts on which the judge prefers the one that passes; its `n` in
  report.json is how many such prompts there were. No mark: each row holds different prompts.

A score on 100 items is one draw: the card shows every cell with its 95% interval (binomial_ci, Wilson; a
bootstrap for val_loss) and marks a change against the row's parent only when a paired test on the same
items finds it (mcnemar_p for 0/1 scores, paired_difference otherwise; p < 0.05). Rows can hold several
seeds (`python -m minipost.pipeline --seeds 1337,2,3`): their cells are the mean ± sd over seeds.

    python -m minipost.card --ckpt runs/pipeline/base/model.pt --ckpt runs/pipeline/sft/model.pt --out report
    python -m minipost.card --ckpt runs/pipeline/dpo/model.pt --ref runs/pipeline/sft/model.pt \
        --judge runs/pipeline/reward_model/model.pt --baseline runs/pipeline/sft/model.pt   # + win_rate
    python -m minipost.card.bands runs/pipeline/report/report.json                         # is my card normal?

The package, in the order a card is made:
    evaluate.py   each checkpoint's per-item scores on every column (evaluate_items; the judge's win_rate)
    stats.py      intervals (binomial_ci, bootstrap_ci) and paired tests (mcnemar_p, paired_difference)
    report.py     items -> the card (card), its table, its heatmap, report.json (write_report, read_report)
    bands.py      a card against the spread of three full runs (data/bands_nano.json)
    __main__.py   the command line above
"""
from minipost.card.evaluate import eval_answers, evaluate_checkpoint, evaluate_items, judge_agreement, win_items
from minipost.card.report import (COLUMN_ORDER, HIGHER_IS_BETTER, UNPAIRED, card, column_range, read_report,
                                  report_table, write_report)
from minipost.card.stats import ALPHA, binomial_ci, bootstrap_ci, mcnemar_p, paired_difference, paired_test

__all__ = ["eval_answers", "evaluate_checkpoint", "evaluate_items", "judge_agreement", "win_items", "COLUMN_ORDER",
           "HIGHER_IS_BETTER", "UNPAIRED", "card", "column_range", "read_report", "report_table", "write_report",
           "ALPHA", "binomial_ci", "bootstrap_ci", "mcnemar_p", "paired_difference", "paired_test"]
