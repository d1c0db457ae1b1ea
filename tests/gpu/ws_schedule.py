#!/usr/bin/env python3
"""A model of flash version 8's schedule (kernels/cuda/flash_ws.cuh: Pipe::produce and consume), run under
random interleavings of the producer and the two consumers: no deadlock, no stage refilled while a consumer
may still read it, no second arrival on a turn barrier before its waiter has passed, every barrier
balanced at the end, and no step whose copies were issued held unpublished while the producer waits for a
stage (that would make one consumer's turn wait for the other's elementwise work: the ping-pong lost). It
restates the kernel's waits and arrivals (a model, not the kernel: keep the two in step when changing either).
usage: ws_schedule.py [--publish-after-wait] [STAGES ...]   (default: 2 3 4)
--publish-after-wait: the producer of sessions 17-22, which published step w - 1 only after issuing step w, so
after the wait for its stage (tests/flash_ws.bats: this check must find it)"""
import random
import sys


def run(nw, mw, ST, seed, publish_after_wait):
    rnd = random.Random(seed)
    full = [0] * ST                 # completed phases of each stage's full barrier
    empty = [0] * ST                # completed phases of each stage's empty barrier
    empty_arrivals = [0] * ST       # (the two consumers, as units)
    bar = {1: [0, 0], 2: [0, 0]}    # turn barriers: arrivals, completed waits
    stage_step = [None] * ST
    reading = [set(), set()]        # the steps each consumer may still read

    def producer():
        published = -1
        for w in range(nw):
            st = w % ST
            if w >= ST and empty[st] < w // ST:     # the stage is still read (mbar_ready false)
                if published < w - 1 and not publish_after_wait:
                    full[(w - 1) % ST] += 1         # step w - 1 published before the wait (landed<0>)
                    published = w - 1
                while empty[st] < w // ST:
                    # the ping-pong: a step whose copies were issued is never held back behind a stage's release
                    assert published == w - 1, ('step held behind the wait for a stage', w - 1)
                    yield 'empty'
            for c in range(2):
                assert w - ST not in reading[c], ('refilled while read', w, c)
            stage_step[st] = w
            yield None              # copies in flight
            if published < w - 1:
                full[(w - 1) % ST] += 1   # step w - 1 published once step w is issued (landed<1>)
                published = w - 1
        if published < nw - 1:
            full[(nw - 1) % ST] += 1

    def consumer(cw, mwc):
        mine, other = 1 + cw, 2 - cw

        def turn_begin(w):
            if w < nw:
                while full[w % ST] < w // ST + 1:
                    yield 'full'
                assert stage_step[w % ST] == w
                reading[cw].add(w)
            while bar[mine][0] <= bar[mine][1]:
                yield 'turn'
            bar[mine][1] += 1

        def turn_end(w):
            if cw == 0 or w < nw:
                bar[other][0] += 1
                assert bar[other][0] - bar[other][1] <= 1, 'second arrival before the wait'

        def release(step):
            st = step % ST
            reading[cw].discard(step)
            empty_arrivals[st] += 1
            if empty_arrivals[st] == 2:
                empty_arrivals[st] = 0
                empty[st] += 1

        if cw == 1:
            bar[1][0] += 1
        w = 0
        if mwc > 0:
            yield from turn_begin(0)
            turn_end(0)
            for w in range(1, mwc):
                yield from turn_begin(w)
                turn_end(w)
                release(w - 1)
            w = mwc
            yield from turn_begin(w)
            turn_end(w)
            release(w - 1)
            w += 1
        while w <= nw:
            yield from turn_begin(w)
            turn_end(w)
            if w >= 1:
                release(w - 1)
            w += 1

    alive = {'producer': producer(), 'consumer 0': consumer(0, mw[0]), 'consumer 1': consumer(1, mw[1])}
    blocked = 0
    while alive:
        name = rnd.choice(sorted(alive))
        try:
            blocked = blocked + 1 if next(alive[name]) else 0
        except StopIteration:
            del alive[name]
            continue
        if blocked > 10000:
            raise SystemExit(f'ws_schedule: deadlock at {nw} steps, consumers {mw}, {ST} stages: {sorted(alive)} waiting')
    assert not any(empty_arrivals) and bar[1][0] == bar[1][1] and bar[2][0] == bar[2][1], (empty_arrivals, bar)


args = sys.argv[1:]
publish_after_wait = '--publish-after-wait' in args
stages = [int(a) for a in args if a != '--publish-after-wait'] or [2, 3, 4]
n = 0
for ST in stages:
    for nw in range(1, 10):
        for m0 in range(nw + 1):
            for m1 in range(nw + 1):
                if max(m0, m1) != nw:
                    continue  # the block's steps are its busier consumer's
                for seed in range(20):
                    run(nw, (m0, m1), ST, seed, publish_after_wait)
                    n += 1
print(f'ws_schedule: {n} interleavings at {stages} stages: no deadlock, no stage refilled while read, barriers balanced, '
      'no step held behind a stage')
