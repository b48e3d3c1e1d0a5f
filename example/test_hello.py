"""A first script to send:

curl --data-binary @example/test_hello.py 'localhost:8080/execute?language=python'
"""

import platform


def primes(count: int) -> list[int]:
    found: list[int] = []
    candidate = 2
    while len(found) < count:
        if all(candidate % p for p in found):
            found.append(candidate)
        candidate += 1
    return found


print(f"Hello from a gVisor sandbox, Python {platform.python_version()}!")
print("sum of squares of 1..10:", sum(n * n for n in range(1, 11)))
print("first ten primes:", primes(10))
