#!/usr/bin/env bash
# Set-up for the variant-calling example on the fleet's Amazon Linux 2023 instances: bwa, samtools
# and bcftools from Bioconda into /opt/tools, linked into /usr/local/bin. The bootstrap runs it once
# per instance, as root, before the worker starts:
#
#   npx cdk deploy -c table=VariantCalling -c setup=examples/variant-calling/setup.sh
#
# A failure (or a run past -c setup_timeout) is a failed boot: the instance records it and leaves.
set -euo pipefail
case "$(uname -m)" in
  x86_64) platform=linux-64 ;;
  aarch64) platform=linux-aarch64 ;;
  *) echo "setup.sh: no micromamba build for $(uname -m)" >&2; exit 1 ;;
esac
curl -fsSL "https://micro.mamba.pm/api/micromamba/$platform/latest" | tar -xj -C /usr/local bin/micromamba
/usr/local/bin/micromamba create --yes --quiet --prefix /opt/tools -c conda-forge -c bioconda \
  bwa samtools bcftools
for tool in bwa samtools bcftools; do
  ln -sf "/opt/tools/bin/$tool" "/usr/local/bin/$tool"
done
bcftools --version | head -n 1
