#!/usr/bin/env python3
"""A tiny synthetic variant-calling data set: a reference of 3 chromosomes and single-end reads
for 4 samples, each sample with its own homozygous SNPs, then `bwa index` and `samtools faidx`.

    python3 examples/variant-calling/make_data.py DIR

The same DIR, the same files, byte for byte (a fixed seed): runs can be compared exactly.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

CHROMOSOMES = ("chr1", "chr2", "chr3")
CHROMOSOME_LENGTH = 8_000
SAMPLES = ("S1", "S2", "S3", "S4")
READ_LENGTH = 100
COVERAGE = 12
SNP_EVERY = 400  # on average, per sample


def make(folder: Path) -> None:
    rng = random.Random(20261202)
    folder.mkdir(parents=True, exist_ok=True)
    reference = {name: "".join(rng.choice("ACGT") for _ in range(CHROMOSOME_LENGTH)) for name in CHROMOSOMES}
    with open(folder / "ref.fa", "w") as fasta:
        for name, sequence in reference.items():
            fasta.write(f">{name}\n")
            for start in range(0, len(sequence), 60):
                fasta.write(sequence[start:start + 60] + "\n")
    for sample in SAMPLES:
        genome = {}
        for name, sequence in reference.items():
            bases = list(sequence)
            for position in range(rng.randrange(SNP_EVERY), len(bases), SNP_EVERY + rng.randrange(-50, 50)):
                bases[position] = rng.choice([b for b in "ACGT" if b != bases[position]])
            genome[name] = "".join(bases)
        reads = COVERAGE * CHROMOSOME_LENGTH // READ_LENGTH
        with open(folder / f"{sample}.fq", "w") as fastq:
            for name, sequence in genome.items():
                for n in range(reads):
                    start = rng.randrange(len(sequence) - READ_LENGTH)
                    read = sequence[start:start + READ_LENGTH]
                    fastq.write(f"@{sample}_{name}_{n}\n{read}\n+\n{'I' * READ_LENGTH}\n")
    subprocess.run(["bwa", "index", str(folder / "ref.fa")], check=True, capture_output=True)
    subprocess.run(["samtools", "faidx", str(folder / "ref.fa")], check=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_data.py DIR")
    make(Path(sys.argv[1]))
