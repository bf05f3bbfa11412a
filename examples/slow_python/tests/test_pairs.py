from pairs import count_close_pairs


def test_empty():
    assert count_close_pairs([], 1.0) == 0


def test_single_value():
    assert count_close_pairs([3.0], 1.0) == 0


def test_small():
    assert count_close_pairs([0.0, 0.5, 2.0, 2.4], 0.5) == 2


def test_radius_is_inclusive():
    assert count_close_pairs([1.0, 2.0], 1.0) == 1


def test_duplicates():
    assert count_close_pairs([5.0, 5.0, 5.0], 0.0) == 3
