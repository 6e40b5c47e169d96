#!/usr/bin/env bash
# `make deploy-secrets`: the Secrets Trainyard needs, each created with a random value when it is
# missing; an existing Secret is never overwritten (rotate one by deleting it, then restart NATS and
# the service that uses it). Values never reach the terminal or a file.
#   trainyard-nats-user-<user>  key "password"  (NATS reads all of them; each service its own)
#   trainyard-api-token         key "token"     (the submission API's admin bearer token)
#   trainyard-admission-key     key "key"       (submission and scheduler only: docs/security.md)
set -euo pipefail
KUBECTL="${KUBECTL:-kubectl}"
NAMESPACE="${K8S_NAMESPACE:-trainyard}"
# one user per executor id (deploy/nats/natsauth.py, K8S_EXECUTORS)
USERS=(submission scheduler executor-k8s-default registry telemetry workflow client fetcher admin)

# letters and digits, a letter first: nats-server reads a password from the environment as config
# text, where a leading digit makes a number and punctuation may end the token
random_value() { python3 -c 'import secrets, string; a = string.ascii_letters; print(secrets.choice(a) + "".join(secrets.choice(a + string.digits) for _ in range(39)))'; }

ensure() {  # name key
    if $KUBECTL -n "$NAMESPACE" get secret "$1" >/dev/null 2>&1; then
        echo "secret/$1 exists (kept)"
        return
    fi
    $KUBECTL -n "$NAMESPACE" create secret generic "$1" --from-literal="$2=$(random_value)" >/dev/null
    $KUBECTL -n "$NAMESPACE" label secret "$1" app.kubernetes.io/part-of=trainyard >/dev/null
    echo "secret/$1 created"
}

$KUBECTL get namespace "$NAMESPACE" >/dev/null 2>&1 || $KUBECTL apply -f "$(dirname "$0")/../base/namespace.yaml"
for user in "${USERS[@]}"; do
    ensure "trainyard-nats-user-$user" password
done
ensure trainyard-api-token token
ensure trainyard-admission-key key  # submission signs admitted jobs, the scheduler checks
echo "the admin API token: kubectl -n $NAMESPACE get secret trainyard-api-token -o jsonpath='{.data.token}' | base64 -d"
