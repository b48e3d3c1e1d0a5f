"""Fails on purpose: the answer is still a 200, with exit_code 1 and the traceback in stderr."""


def average(values: list[float]) -> float:
    return sum(values) / len(values)


print("about to average an empty list...")
print(average([]))
