"""Names defined once: the CLI's choices and the report's splits come from the library."""

import argparse
import dataclasses

from qnnrepair.cli import build_parser
from qnnrepair.data import SPLIT_NAMES, Splits
from qnnrepair.outcomes import ORACLES
from qnnrepair.quantization.config import ACT_CALIBRATIONS, WEIGHT_CLIPPINGS
from qnnrepair.repair.config import LAYER_CHOICES


def _choices(parser: argparse.ArgumentParser, command: str) -> dict[str, tuple]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.choices for a in sub.choices[command]._actions if a.choices is not None}


def test_cli_choices_are_the_configs():
    parser = build_parser()
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    seen = {}
    for command in commands:
        seen.update(_choices(parser, command))
    assert seen["weight_clipping"] is WEIGHT_CLIPPINGS
    assert seen["act_calibration"] is ACT_CALIBRATIONS
    assert seen["oracle"] is ORACLES
    assert seen["layers"] is LAYER_CHOICES


def test_split_names_are_the_fields_of_splits():
    fields = [f.name for f in dataclasses.fields(Splits)]
    assert list(SPLIT_NAMES) == fields[:3]


def test_report_uses_the_one_definition():
    from qnnrepair.report import SPLITS

    assert SPLITS is SPLIT_NAMES
