"""Write configs/data/arithmetic-open-ended.jsonl, the prompts of configs/open-ended.yaml.

The quickstart's problems (a+b, and a-b with a >= b, operands 0..99) as a JSONL task: a seeded
shuffle puts the first HELDOUT_SIZE in the held-out split WITHOUT answers (the open-ended
path: scored by win rate, the `tool` critic computing each answer itself), the rest are train
lines with `"answer": "A:<n>"`, which only the tiny model's SFT reads (the loop's judge is the
tool critic; it never looks at them).

    python scripts/make_open_ended_data.py            # rewrites the shipped file, byte for byte
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HELDOUT_SIZE = 500
SEED = 0
DEFAULT_OUT = Path(__file__).parents[1] / "configs" / "data" / "arithmetic-open-ended.jsonl"


def problems() -> list[tuple[str, int]]:
    """Every (prompt, value) once, in a fixed order."""
    out = []
    for a in range(100):
        for b in range(100):
            out.append((f"Q:{a}+{b}=", a + b))
            if a >= b:
                out.append((f"Q:{a}-{b}=", a - b))
    return out


def lines(heldout_size: int = HELDOUT_SIZE, seed: int = SEED) -> list[dict]:
    """Held-out lines first (prompt and split only), then the train lines with answers."""
    pool = problems()
    random.Random(seed).shuffle(pool)
    heldout = [{"prompt": p, "split": "heldout"} for p, _ in pool[:heldout_size]]
    train = [{"prompt": p, "answer": f"A:{v}"} for p, v in pool[heldout_size:]]
    return heldout + train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--heldout-size", type=int, default=HELDOUT_SIZE)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(
        json.dumps(line, separators=(",", ":")) + "\n" for line in lines(args.heldout_size)
    )
    args.out.write_text(text, encoding="utf-8")
    print(f"{args.out}: {text.count(chr(10))} lines")


if __name__ == "__main__":
    main()
