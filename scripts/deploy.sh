#!/bin/bash
# Deploys the service to Cloud Run: builds the `gcloud run deploy` command from the settings
# below, prints it, and runs it (DRY_RUN=1: prints only). docs/cloud-run.md explains every
# flag and what to create first (bucket, Cloud SQL instance, secrets).
#   PROJECT=my-project REGION=europe-west1 BUCKET=my-checkpoints make deploy
# Arguments after `--` go to gcloud as they are: scripts/deploy.sh -- --labels=team=data
# (make deploy DEPLOY_ARGS='--labels=team=data').
set -euo pipefail

# Settings, each an environment variable (make passes its command-line variables through).
PROJECT="${PROJECT:-}"                  # Google Cloud project (required)
REGION="${REGION:-}"                    # Cloud Run region (required)
SERVICE="${SERVICE:-gvisor-sandbox}"    # service name
IMAGE="${IMAGE:-}"                      # a pushed image; empty: Cloud Build builds `--source .`
BUCKET="${BUCKET:-}"                    # Cloud Storage bucket for checkpoints (shared store)
CHECKPOINT_MOUNT="${CHECKPOINT_MOUNT:-/mnt/checkpoints}"
SQL_INSTANCE="${SQL_INSTANCE:-}"        # Cloud SQL connection name, PROJECT:REGION:INSTANCE
DATABASE_URL_SECRET="${DATABASE_URL_SECRET:-}"  # secret holding SANDBOX_DATABASE_URL
TOKENS_SECRET="${TOKENS_SECRET:-}"      # secret holding SANDBOX_API_TOKENS; empty: IAM only
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"  # the instances' identity; empty: the default one
CPU="${CPU:-4}"
MEMORY="${MEMORY:-16Gi}"
CONCURRENCY="${CONCURRENCY:-80}"
MIN_INSTANCES="${MIN_INSTANCES:-1}"
MAX_INSTANCES="${MAX_INSTANCES:-10}"
TIMEOUT="${TIMEOUT:-3600}"              # request timeout, seconds (Cloud Run allows 3600)
SHUTDOWN_GRACE_S="${SHUTDOWN_GRACE_S:-8}"  # Cloud Run kills 10 s after SIGTERM
DRY_RUN="${DRY_RUN:-}"

fail() {
    echo "deploy: $*" >&2
    exit 2
}

[ -n "$PROJECT" ] || fail "set PROJECT (the Google Cloud project)"
[ -n "$REGION" ] || fail "set REGION (the Cloud Run region, e.g. europe-west1)"
if [ -n "$SQL_INSTANCE" ] && [ -z "$DATABASE_URL_SECRET" ]; then
    fail "SQL_INSTANCE needs DATABASE_URL_SECRET: the secret holding SANDBOX_DATABASE_URL"
fi
if [ -n "$DATABASE_URL_SECRET" ] && [ -z "$SQL_INSTANCE" ]; then
    fail "DATABASE_URL_SECRET needs SQL_INSTANCE: the Cloud SQL connection name"
fi
if [ "${1:-}" = "--" ]; then
    shift
elif [ $# -gt 0 ]; then
    fail "unexpected argument $1 (gcloud's own flags go after --)"
fi

command=(gcloud run deploy "$SERVICE" "--project=$PROJECT" "--region=$REGION")
if [ -n "$IMAGE" ]; then
    command+=("--image=$IMAGE")
else
    command+=(--source=.)
fi
command+=(
    --execution-environment=gen2
    "--cpu=$CPU" "--memory=$MEMORY"
    "--concurrency=$CONCURRENCY"
    --no-cpu-throttling
    --session-affinity
    "--min-instances=$MIN_INSTANCES" "--max-instances=$MAX_INSTANCES"
    "--timeout=$TIMEOUT"
    --no-allow-unauthenticated
)
[ -z "$SERVICE_ACCOUNT" ] || command+=("--service-account=$SERVICE_ACCOUNT")

# Cloud Run routes by its own host names (the service URL is known only after the first
# deploy): the Host check is left to it; the Origin check stays.
env_vars=("SANDBOX_SHUTDOWN_GRACE_S=$SHUTDOWN_GRACE_S" "SANDBOX_ALLOWED_HOSTS=*")
secrets=()
if [ -n "$BUCKET" ]; then
    command+=("--add-volume=name=checkpoints,type=cloud-storage,bucket=$BUCKET"
              "--add-volume-mount=volume=checkpoints,mount-path=$CHECKPOINT_MOUNT")
    env_vars+=("SANDBOX_CHECKPOINT_DIR=$CHECKPOINT_MOUNT")
fi
if [ -n "$SQL_INSTANCE" ]; then
    command+=("--set-cloudsql-instances=$SQL_INSTANCE")
    secrets+=("SANDBOX_DATABASE_URL=$DATABASE_URL_SECRET:latest")
fi
if [ -n "$TOKENS_SECRET" ]; then
    secrets+=("SANDBOX_API_TOKENS=$TOKENS_SECRET:latest")
else
    # Cloud Run's IAM (--no-allow-unauthenticated) checks every request before it arrives.
    env_vars+=("SANDBOX_ALLOW_UNAUTHENTICATED=true")
fi
command+=("--set-env-vars=$(IFS=,; echo "${env_vars[*]}")")
# --set-env-vars and --set-secrets replace the service's whole set: the deploy says it all.
if [ ${#secrets[@]} -gt 0 ]; then
    command+=("--set-secrets=$(IFS=,; echo "${secrets[*]}")")
else
    command+=(--clear-secrets)
fi
command+=("$@")

# Printed so that it can be pasted into a shell: a flag a line, quoted where a word needs it.
quoted() {
    if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then echo "$1"; else echo "${1@Q}"; fi
}
line="${command[*]:0:4}"
for word in "${command[@]:4}"; do
    printf '%s \\\n' "$line"
    line="    $(quoted "$word")"
done
echo "$line"
if [ -n "$DRY_RUN" ]; then
    exit 0
fi
exec "${command[@]}"
