"""Grade-school math word problems in GSM8K's record form, brought by a user (minipost ships none):

    {"question": "...", "answer": "... worked solution ...\\n#### 72"}

The final answer is the number after `####`. Such a file serves SFT (the question, then the whole solution as
the answer: to_messages) and RL (the question as the prompt, the final number as what the checker wants:
to_rl_record, whose prompt ends by asking for that line). The checker is strict: it reads the number after a
completion's last `####`, else inside its last `\\boxed{...}`, else nothing (an answer that states no final
number scores 0, however close its last number comes; a "flexible" grader would take the last number in the
text instead). Numbers compare as values: "1,000", "1000.0" and "+1000" are equal; "$" and a trailing "." are
dropped; a fraction ("5/2") is no number here.
"""
from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation

from minipost.common import InputError

HASHES = re.compile(r"####[ \t]*([-+]?\$?[\d,]*\.?\d+)(?![./]?\w)")  # the number right after ####, a whole word
ASK = "\nEnd with the final answer on its own line as: #### <number>"  # what an RL prompt asks for
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def number(text: str) -> str | None:
    """A written number -> its canonical form ("1,000.50" -> "1000.5", "+7" -> "7", "-0" -> "0"), else None."""
    t = text.strip().replace(",", "").replace("\\$", "").replace("$", "").rstrip(".").strip()
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", t):  # digits only: no exponent ("1e999999999" would be written
        return None  # out in full), no inf or nan
    try:
        value = Decimal(t)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize(Context(prec=len(value.as_tuple().digits)))  # exact: the default 28 digits round
    return "0" if value.is_zero() else format(value, "f")


def final_number(completion: str) -> str | None:
    """The number a completion gives as its final answer: after its last ####, else in its last \\boxed{}."""
    for pattern in (HASHES, BOXED):
        found = pattern.findall(completion)
        if found:
            return number(found[-1])
    return None


def check(record: dict, completion: str) -> float:
    """1.0 when the completion's final number equals the record's answer, else 0.0."""
    got = final_number(completion)
    return float(got is not None and got == number(record["answer"]))


def has_final_answer(completion: str) -> float:
    """The format reward: 1.0 when the completion states a final number (#### N or \\boxed{N})."""
    return float(final_number(completion) is not None)


def validate(record: dict) -> str | None:
    """An RL record's answer must be a number (validate_record's domain check)."""
    return None if number(str(record["answer"])) is not None else f"field 'answer': {record['answer']!r} is no number"


def solution_answer(answer: str, where: str) -> str:
    """A GSM8K solution's final number (after its ####); InputError naming the field otherwise."""
    found = HASHES.findall(answer)
    value = number(found[-1]) if found else None
    if value is None:
        raise InputError(f"{where}: field 'answer' has no final '#### N' line with a number (GSM8K's form)")
    return value


def is_gsm8k(row: dict) -> bool:
    return isinstance(row, dict) and "question" in row and "answer" in row and "prompt" not in row


def check_row(row: dict, where: str) -> None:
    for key in ("question", "answer"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise InputError(f"{where}: field {key!r} must be a non-empty string")
    solution_answer(row["answer"], where)


def to_messages(row: dict, where: str) -> list[dict]:
    """SFT: the question, then the worked solution (#### line included) as the answer."""
    check_row(row, where)
    return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]


def to_rl_record(row: dict, where: str) -> dict:
    """RL: the question, asking for the #### line, as the prompt; the checker wants the solution's final number."""
    check_row(row, where)
    return {"prompt": row["question"] + ASK, "domain": "gsm8k", "answer": solution_answer(row["answer"], where)}
