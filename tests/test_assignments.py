"""Grading tests for docs/ASSIGNMENTS.md: each runs its check (tests/grading.py) on the project's
own function, looked up when the test runs, so whatever a student wrote into stepcoder.py /
curriculum.py / sandbox.py is what gets graded:

    python3 -m pytest -q tests/test_assignments.py -k grade_<name>

The wrong answers that prove each check can fail are in tests/test_grading.py: the answer key, so
grade first.
"""
from grading import (check_compute_gae, check_curriculum_update, check_fgo_mask, check_kl_penalized_rewards,
                     check_logprobs_and_values, check_outputs_match, check_policy_loss, check_program_text,
                     check_response_length, check_split_points, check_stage_prefixes, check_value_loss,
                     check_whiten, check_group_advantages, real)


def test_grade_compute_gae():
    check_compute_gae(real("stepcoder", "compute_gae"))


def test_grade_policy_loss():
    check_policy_loss(real("stepcoder", "policy_loss"))


def test_grade_value_loss():
    check_value_loss(real("stepcoder", "value_loss"))


def test_grade_fgo_mask():
    check_fgo_mask(real("stepcoder", "fgo_mask"))


def test_grade_kl_penalized_rewards():
    check_kl_penalized_rewards(real("stepcoder", "kl_penalized_rewards"))


def test_grade_split_points():
    check_split_points(real("curriculum", "split_points"))


def test_grade_stage_prefixes():
    check_stage_prefixes(real("curriculum", "stage_prefixes"))


def test_grade_curriculum_update():
    check_curriculum_update(real("curriculum", "Curriculum.update"))


def test_grade_outputs_match():
    check_outputs_match(real("sandbox", "outputs_match"))


def test_grade_logprobs_and_values():
    check_logprobs_and_values(real("stepcoder", "logprobs_and_values"))


def test_grade_whiten():
    check_whiten(real("stepcoder", "whiten"))


def test_grade_response_length():
    check_response_length(real("stepcoder", "response_length"))


def test_grade_program_text():
    check_program_text(real("stepcoder", "program_text"))


def test_grade_group_advantages():
    check_group_advantages(real("stepcoder", "group_advantages"))
