"""The exercise's tests: unittest only, which every sandbox has."""

import unittest

from student import mean, median, word_count


class MeanTest(unittest.TestCase):
    def test_mean_of_a_few_numbers(self) -> None:
        self.assertEqual(mean([1, 2, 3, 4]), 2.5)


class MedianTest(unittest.TestCase):
    def test_median_of_an_odd_count(self) -> None:
        self.assertEqual(median([5, 1, 3]), 3)

    def test_median_of_an_even_count(self) -> None:
        self.assertEqual(median([4, 1, 3, 2]), 2.5)


class WordCountTest(unittest.TestCase):
    def test_words_are_counted_whatever_their_case(self) -> None:
        self.assertEqual(word_count("the cat The hat"), {"the": 2, "cat": 1, "hat": 1})

    def test_no_words_no_counts(self) -> None:
        self.assertEqual(word_count(""), {})
