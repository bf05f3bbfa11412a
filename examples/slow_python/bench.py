"""Times count_close_pairs on a fixed input (the same every run)."""

import random

from pairs import count_close_pairs


def main() -> None:
    rng = random.Random(7)
    values = [rng.uniform(0.0, 1000.0) for _ in range(2500)]
    result = count_close_pairs(values, 2.5)
    print(result)


if __name__ == "__main__":
    main()
