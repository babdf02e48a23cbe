"""The worked examples of the reference documents (shared/reference/),
reproduced with ce_kernels. Expected values are computed here by hand from
the examples' inputs with math.log, not copied from the documents: some of
their printed outputs are wrong (noted per case)."""
import math

import numpy as np
import pytest

import ce_kernels as ck


def ce_bits(p, q):
    """H(p, q) in bits through ce_kernels: soft targets p on logits log(q)."""
    return float(ck.cross_entropy(np.log(np.array([q])), np.array([p]), reduction="sum")) / math.log(2)


# Document 000: true distribution [0.9, 0.1], predictions moved 0.1 at a time;
# cross-entropy in bits, printed to 3 decimals (those printed values are right).
PREDICTIONS_000 = [([0.9, 0.1], 0.469), ([0.8, 0.2], 0.522), ([0.7, 0.3], 0.637),
                   ([0.6, 0.4], 0.795), ([0.5, 0.5], 1.0), ([0.4, 0.6], 1.263),
                   ([0.3, 0.7], 1.615), ([0.2, 0.8], 2.122), ([0.1, 0.9], 3.005)]


@pytest.mark.parametrize("q,printed", PREDICTIONS_000)
def test_doc000_cross_entropy_in_bits(q, printed):
    p = [0.9, 0.1]
    by_hand = -(p[0] * math.log2(q[0]) + p[1] * math.log2(q[1]))
    got = ce_bits(p, q)
    assert got == pytest.approx(by_hand, rel=1e-12)
    assert round(got, 3) == printed


def test_doc000_lowest_when_prediction_is_true_distribution():
    values = [ce_bits([0.9, 0.1], q) for q, _ in PREDICTIONS_000]
    assert values[0] == min(values)


def test_doc002_binary_spam_example():
    # true label spam (class 0), predicted [0.8, 0.2]: -log(0.8) ~= 0.2231
    loss = ck.cross_entropy(np.log([[0.8, 0.2]]), np.array([0]))
    assert float(loss) == pytest.approx(-math.log(0.8), rel=1e-12)
    assert round(float(loss), 2) == 0.22


def test_doc002_three_class_example():
    # true class B, predicted [0.1, 0.7, 0.2]: -log(0.7) ~= 0.3567
    loss = ck.cross_entropy(np.log([[0.1, 0.7, 0.2]]), np.array([1]))
    assert float(loss) == pytest.approx(-math.log(0.7), rel=1e-12)


def test_doc002_language_model_token_losses():
    """A vocabulary-sized softmax where the target token gets probability p:
    the loss is -log(p). The document prints 0.5591 for p = 0.5717 (right)
    and 16.2224 for p = 4.6965e-07, which is wrong: -log(4.6965e-07) = 14.5713."""
    vocab, target = 8000, 900
    for p_target, expected in [(0.5717, 0.5591), (4.6965e-07, 14.5713), (1.0 - 1e-12, 0.0)]:
        probs = np.full(vocab, (1.0 - p_target) / (vocab - 1))
        probs[target] = p_target
        logits = np.log(probs)[None, :] + 3.0  # logits are only defined up to a shift
        loss = float(ck.cross_entropy(logits, np.array([target])))
        assert loss == pytest.approx(-math.log(p_target), rel=1e-9, abs=1e-11)
        assert round(loss, 4) == expected


def test_doc003_probabilities_as_input():
    # [0.25, 0.35, 0.4] with label 2: -log(0.4) = 0.9163
    loss = ck.cross_entropy(np.log([[0.25, 0.35, 0.4]]), np.array([2]))
    assert float(loss) == pytest.approx(-math.log(0.4), rel=1e-12)
    assert round(float(loss), 4) == 0.9163


def test_doc003_softmax_gradient_is_p_minus_onehot():
    z = [0.25, 0.35, 0.4]
    exps = [math.exp(v) for v in z]
    p = [e / sum(exps) for e in exps]
    expected = [p[0], p[1], p[2] - 1.0]
    _, grad = ck.cross_entropy_with_grad(np.array([z]), np.array([2]))
    np.testing.assert_allclose(grad[0], expected, rtol=1e-13)


def test_doc004_categorical_example():
    """Document 004 prints 1.181944395487012; from its inputs the value is
    (-log 0.7 - log 0.8 - log 0.5) / 3 = 0.424322..."""
    y_true = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    by_hand = -(math.log(0.7) + math.log(0.8) + math.log(0.5)) / 3
    assert ck.cross_entropy(np.log(y_pred), y_true) == pytest.approx(by_hand, rel=1e-12)
    assert ck.cross_entropy(np.log(y_pred), np.array([0, 1, 2])) == pytest.approx(by_hand, rel=1e-12)
    assert round(by_hand, 5) == 0.42432


@pytest.mark.parametrize("y,p,expected_rounded", [
    ([1, 0, 1], [0.9, 0.1, 0.7], 0.18913),
    # Document 004 prints 0.3285061001454424; from its inputs it is 0.16425...
    ([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2], 0.16425),
])
def test_doc004_binary_examples_as_two_class_softmax(y, p, expected_rounded):
    """Binary cross-entropy is the two-class softmax cross-entropy with
    logits [log(1 - p), log(p)]."""
    p = np.array(p)
    by_hand = -np.mean([math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p)])
    logits = np.log(np.stack([1 - p, p], axis=-1))
    loss = ck.cross_entropy(logits, np.array(y))
    assert loss == pytest.approx(by_hand, rel=1e-12)
    assert round(float(loss), 5) == expected_rounded


# ---- the rest of the family -------------------------------------------------------

@pytest.mark.parametrize("heads,printed", [(0.488, 0.9996), (0.177, 0.6735)])
def test_doc002_coin_entropy_in_bits(heads, printed):
    by_hand = -(heads * math.log2(heads) + (1 - heads) * math.log2(1 - heads))
    got = float(ck.entropy([heads, 1 - heads], base=2))
    assert got == pytest.approx(by_hand, rel=1e-13)
    assert round(got, 4) == printed


@pytest.mark.parametrize("q,printed", PREDICTIONS_000)
def test_doc000_with_cross_entropy_probs(q, printed):
    got = float(ck.cross_entropy_probs([0.9, 0.1], q, base=2))
    assert round(got, 3) == printed
    assert got == pytest.approx(ce_bits([0.9, 0.1], q), rel=1e-12)


def test_doc003_kl_is_cross_entropy_minus_entropy():
    p, q = [0.9, 0.1], [0.8, 0.2]
    by_hand = 0.9 * math.log2(0.9 / 0.8) + 0.1 * math.log2(0.1 / 0.2)
    kl = float(ck.kl_divergence(p, q, base=2))
    assert kl == pytest.approx(by_hand, rel=1e-13)
    assert kl == pytest.approx(float(ck.cross_entropy_probs(p, q, base=2)) - float(ck.entropy(p, base=2)), rel=1e-12)
    assert round(kl, 4) == 0.0529


@pytest.mark.parametrize("y,p,expected_rounded", [
    ([1, 0, 1], [0.9, 0.1, 0.7], 0.18913),
    ([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2], 0.16425),   # printed as 0.3285... in document 004
])
def test_doc004_binary_cross_entropy(y, p, expected_rounded):
    by_hand = -np.mean([math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p)])
    probs = float(ck.binary_cross_entropy_probs(np.array(p), np.array(y, dtype=float)))
    logits = float(ck.binary_cross_entropy(np.log(np.array(p) / (1 - np.array(p))), np.array(y, dtype=float)))
    assert probs == pytest.approx(by_hand, rel=1e-12)
    assert logits == pytest.approx(by_hand, rel=1e-12)
    assert round(probs, 5) == expected_rounded


def test_doc004_categorical_with_cross_entropy_probs():
    y_true = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    assert float(np.mean(ck.cross_entropy_probs(y_true, y_pred))) == pytest.approx(0.4243218, rel=1e-6)


def test_doc004_gradient_through_the_sigmoid():
    """The document's gradient with respect to the probability,
    -y/p + (1-y)/(1-p), times dp/dx = p(1-p) is p - y: the gradient
    binary_cross_entropy_with_grad returns with respect to the logit."""
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.9, 0.1, 0.8, 0.2])
    d_dp = -y / p + (1 - y) / (1 - p)
    _, grad = ck.binary_cross_entropy_with_grad(np.log(p / (1 - p)), y, reduction="none")
    np.testing.assert_allclose(grad, d_dp * p * (1 - p), rtol=1e-12)
    np.testing.assert_allclose(grad, p - y, rtol=1e-12, atol=1e-15)
