"""How problems are reported: every stage's problems (the schema, the components) in one
message, each line within MAX_PROBLEM_LENGTH, long values echoed cut short."""

from __future__ import annotations

from trainer.errors import MAX_PROBLEM_LENGTH, UserError

# ---------------------------------------------------------------- long values, short lines


def test_echoed_values_are_short(tiny_yaml, user_error, write_config) -> None:
    huge = "x" * 1_000_000
    text = tiny_yaml.replace("epochs: 2", f"epochs: {huge}")
    stderr = user_error("config", write_config(text), expect=["trainer.epochs:", "xxx...xxx"])
    assert len(stderr) < 500


def test_no_error_line_is_longer_than_the_cap() -> None:
    (problem,) = UserError("k: " + "y" * 10 * MAX_PROBLEM_LENGTH).problems
    assert len(problem) <= MAX_PROBLEM_LENGTH
    assert problem.startswith("k: yyy") and " ... " in problem


def test_a_long_out_dir_gives_lines_within_the_cap(tiny_yaml, write_config, user_error) -> None:
    out_dir = "d" * 5_000
    stderr = user_error(
        "fit", write_config(tiny_yaml), f"trainer.out_dir={out_dir}", expect=["trainer.out_dir"]
    )
    assert max(len(line) for line in stderr.splitlines()) == MAX_PROBLEM_LENGTH


# ---------------------------------------------------------------- stages reported together


def test_schema_and_component_problems_in_one_message(tiny_yaml, write_config, user_error) -> None:
    stderr = user_error(
        "fit",
        write_config(tiny_yaml),
        "trainer.epoch=3",
        "optimizer.name=adamm",
        expect=["trainer.epoch: unknown key", "optimizer.name: unknown 'adamm'"],
    )
    assert stderr.count("error: ") == 2


def test_schema_and_component_problems_of_several_optimizers_in_one_message(
    tiny_yaml, write_config, user_error
) -> None:
    text = tiny_yaml.replace("optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\n", "") + (
        "optimizers:\n"
        "  d_a: {params: conv, optimizer: {name: SGD, lr: 0.1}}\n"
        "  g: {params: fc, optimizer: {name: Adam, lr: 0.1}, scheduler: {name: StepLRR}}\n"
    )
    stderr = user_error(
        "config",
        write_config(text),
        "trainer.epoch=3",
        "optimizers.d_a.optimizer.name=adamm",
        "model.hiden=3",
        expect=[
            "trainer.epoch: unknown key",
            "model.hiden: not an argument of small_cnn",
            "optimizers.d_a.optimizer.name: unknown 'adamm'",
            "optimizers.g.scheduler.name: unknown 'StepLRR'",
        ],
    )
    assert stderr.count("error: ") == 4


def test_a_section_that_fails_the_schema_is_not_checked_again(
    tiny_yaml, write_config, user_error
) -> None:
    stderr = user_error(
        "fit",
        write_config(tiny_yaml),
        "data.batch_size=0",
        "optimizer.name=adamm",
        expect=["data.batch_size:", "optimizer.name: unknown 'adamm'"],
    )
    assert stderr.count("error: ") == 2
