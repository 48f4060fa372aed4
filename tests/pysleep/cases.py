"""Builds sleep-stage cases and prints pysleep 0.2.0's statistics for them as JSON.

Run by generate.sh inside a virtual environment that has pysleep. The
output is deterministic: the same pysleep gives the same bytes, so CI can
regenerate the file and compare.

Each case contains its stages as a string of digits (one per 30-second epoch),
the session's start and end as ISO 8601 with offset (end may be null, which
pysleep reads as start plus the length of the stages), and `expected`: every
field pysleep's calculator computes, durations in seconds and times in ISO
8601 as Python's `isoformat` writes them.
"""

import itertools
import json
import random
import sys
from datetime import datetime, timedelta, timezone

from pysleep.calculator import SleepStageCalculator

WAKE, LIGHT, DEEP, REM = 0, 1, 2, 3
EPOCH = timedelta(seconds=30)

DURATION_FIELDS = [
    "sleep_latency",
    "wakeup_latency",
    "light_latency",
    "deep_latency",
    "rem_latency",
    "time_in_bed",
    "time_in_sleep_period",
    "time_in_sleep",
    "time_in_wake",
    "time_in_light",
    "time_in_deep",
    "time_in_rem",
    "longest_waso",
    "sleep_cycle",
]
RATIO_FIELDS = ["sleep_efficiency", "sleep_ratio", "wake_ratio", "light_ratio", "deep_ratio", "rem_ratio"]
COUNT_FIELDS = ["waso_count", "sleep_cycle_count"]
TIME_FIELDS = ["start_time", "end_time", "sleep_time", "wake_time"]

ZONES = [timezone(timedelta(hours=hours, minutes=minutes)) for hours, minutes in
         [(9, 0), (0, 0), (-5, 0), (-4, 0), (5, 30), (-3, -30), (1, 0), (12, 45)]]


def seconds(delta):
    """A timedelta as seconds: an int when whole, else a float to the microsecond."""
    if delta is None:
        return None
    if delta % timedelta(seconds=1) == timedelta(0):
        return delta // timedelta(seconds=1)
    return delta.total_seconds()


def expected(stages, start, end):
    stat = SleepStageCalculator().calculate(stages, start, end)
    result = {name: getattr(stat, name).isoformat() for name in TIME_FIELDS}
    result.update({name: seconds(getattr(stat, name)) for name in DURATION_FIELDS})
    result.update({name: getattr(stat, name) for name in RATIO_FIELDS + COUNT_FIELDS})
    result["sleep_cycle_time"] = [time.isoformat() for time in stat.sleep_cycle_time]
    return result


cases = []


def add(name, stages, start, end=None):
    cases.append({
        "name": name,
        "stages": "".join(str(stage) for stage in stages),
        "start_time": start.isoformat(),
        "end_time": end.isoformat() if end is not None else None,
        "expected": expected(stages, start, end),
    })


def evening(rng):
    """A random bedtime in 2026 in a random fixed offset."""
    zone = rng.choice(ZONES)
    day = datetime(2026, 1, 1, tzinfo=zone) + timedelta(days=rng.randrange(365))
    return day + timedelta(hours=rng.choice([21, 22, 23, 24, 25]), minutes=rng.randrange(60),
                           seconds=rng.randrange(60))


def realistic_night(rng):
    """A night of 90-minute-like cycles: deep sleep early, REM growing later,
    REM broken by light sleep, and a few awakenings."""
    stages = [WAKE] * rng.randint(2, 80)
    length = int(rng.uniform(4.0, 10.0) * 120)
    cycle = 0
    while len(stages) < length:
        cycle_epochs = rng.randint(140, 230)
        rem_epochs = min(rng.randint(4, 20 + 12 * cycle), cycle_epochs // 2)
        deep_share = max(0.05, 0.5 - 0.12 * cycle)
        body = []
        while len(body) < cycle_epochs - rem_epochs:
            body += [DEEP if rng.random() < deep_share else LIGHT] * rng.randint(2, 30)
        del body[cycle_epochs - rem_epochs:]
        rem = []
        while sum(1 for stage in rem if stage == REM) < rem_epochs:
            rem += [REM] * rng.randint(1, 15)
            if rng.random() < 0.3:
                rem += [rng.choice([LIGHT, LIGHT, WAKE])] * rng.randint(1, 26)
        body += rem
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            at = rng.randrange(len(body))
            body[at:at] = [WAKE] * rng.randint(1, 30)
        stages += body
        cycle += 1
    del stages[length:]
    return stages + [WAKE] * rng.choice([0, 0, 1, 5, 20, 60])


def fit(stages, length):
    """Cuts or pads with wake to exactly `length` epochs."""
    return (stages + [WAKE] * length)[:length]


def main():
    rng = random.Random(20261204)

    for number in range(240):
        stages = realistic_night(rng)
        start = evening(rng)
        jitter = timedelta(seconds=rng.choice([0, 0, 0, 7, 29, 45]))
        end = None if number % 10 == 0 else start + len(stages) * EPOCH + jitter
        add(f"realistic night {number}", stages, start, end)

    start = datetime(2026, 10, 31, 22, 0, tzinfo=timezone(timedelta(hours=-4)))
    end = datetime(2026, 11, 1, 6, 0, tzinfo=timezone(timedelta(hours=-5)))
    add("night across the end of daylight saving time in New York", fit(realistic_night(rng), 1080), start, end)
    start = datetime(2026, 3, 7, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    end = datetime(2026, 3, 8, 7, 0, tzinfo=timezone(timedelta(hours=-4)))
    add("night across the start of daylight saving time in New York", fit(realistic_night(rng), 840), start, end)

    start = datetime(2026, 11, 20, 23, 47, 7, tzinfo=timezone(timedelta(hours=9)))
    for length in [1, 2, 39, 40, 960]:
        add(f"no sleep at all, {length} epochs", [WAKE] * length, start)
    for stage in [WAKE, LIGHT, DEEP, REM]:
        add(f"one epoch of stage {stage}", [stage], start)
    for length in [1, 19, 20, 21, 40, 960]:
        add(f"all REM, {length} epochs", [REM] * length, start)
    add("all light sleep", [LIGHT] * 960, start)
    add("all deep sleep", [DEEP] * 960, start)
    add("sleep between long wake", [WAKE] * 100 + [LIGHT] + [WAKE] * 100, start)

    # REM clusters around both 20-epoch thresholds: the number of REM epochs
    # in a cluster and the gap of other epochs that still joins two parts.
    for rem_epochs, gap, filler, split in itertools.product([19, 20, 21], [19, 20, 21, 22], [LIGHT, WAKE, DEEP],
                                                            [0, 1, 10]):
        first = rem_epochs - split if split else rem_epochs
        second = split
        stages = [LIGHT] * 5 + [REM] * first + [filler] * gap + [REM] * second + [LIGHT] * 5
        add(f"REM {first} + {second} across a gap of {gap} epochs of stage {filler}", stages, start)
    for gap in [20, 21]:
        stages = ([LIGHT] * 3 + [REM] * 20 + [DEEP] * gap) * 3 + [LIGHT]
        add(f"three cycles {gap} epochs apart", stages, start)
    for cycles in [6, 7, 9, 11]:
        stages = [LIGHT] * 2
        for number in range(cycles):
            stages += [LIGHT] * (25 + number) + [REM] * 20
        add(f"{cycles} cycles whose mean length is not a whole second", stages, start)
    add("REM at sleep onset and at the final awakening", [WAKE] * 4 + [REM] * 25 + [LIGHT] * 30 + [REM] * 20
        + [WAKE] * 9, start)
    add("REM as the only sleep between wake", [WAKE] * 10 + [REM] * 20 + [WAKE] * 10, start)

    # Stage shares that round to sums other than 1.00, so the ratios need
    # nudging. Without light sleep the nudge falls on REM, deep or wake.
    for size in [3, 6, 7, 8, 11]:
        for wake, light, deep, rem in itertools.product(range(size + 1), repeat=4):
            if wake + light + deep + rem != size or wake == size:
                continue
            if size >= 8 and (light > 0 or (wake + deep + rem) % 2):
                continue
            sleep = [LIGHT] * light + [DEEP] * deep + [REM] * rem
            stages = sleep[:1] + [WAKE] * wake + sleep[1:]
            add(f"sleep period of {size}: wake {wake}, light {light}, deep {deep}, REM {rem}", stages, start)

    # Efficiencies whose exact value is a tie at the second decimal, or a
    # float just above or below one.
    for sleep_epochs, bed_seconds in [(27, 6000), (31, 6000), (25, 6000), (15, 3600), (45, 10800), (3, 720)]:
        add(f"efficiency of {sleep_epochs * 30} s asleep in {bed_seconds} s", [LIGHT] * sleep_epochs, start,
            start + timedelta(seconds=bed_seconds))

    # Timestamps that do not line up with the epochs.
    add("fractional start and end", [WAKE] * 3 + [LIGHT] * 50 + [WAKE],
        start + timedelta(microseconds=250000), start + timedelta(seconds=1620, microseconds=999999))
    add("end before the last epoch", [WAKE] * 3 + [LIGHT] * 50 + [WAKE], start, start + timedelta(seconds=601))
    add("end one second after the start", [LIGHT, LIGHT], start, start + timedelta(seconds=1))
    add("end a microsecond after the start", [LIGHT], start, start + timedelta(microseconds=1))

    for number in range(160):
        length = rng.randint(1, 80)
        weights = rng.choice([[1, 1, 1, 1], [4, 1, 1, 1], [1, 2, 1, 4], [1, 1, 0, 6], [0, 1, 0, 1]])
        stages = rng.choices([WAKE, LIGHT, DEEP, REM], weights=weights, k=length)
        add(f"random short night {number}", stages, evening(rng))

    sys.stdout.write('{"pysleep": "0.2.0", "cases": [\n')
    sys.stdout.write(",\n".join(json.dumps(case, separators=(",", ":")) for case in cases))
    sys.stdout.write("\n]}\n")


if __name__ == "__main__":
    main()
