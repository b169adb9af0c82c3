{{/* Small helpers shared by the templates. Commands and ports come from files/services.json, written by
learning_machine.k8s.chart from the same service builders `lm up` runs (a test checks it is current). */}}

{{- define "lm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "lm.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "lm.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; "lm.selector" (list $ component) are the stable ones pods are selected by. */}}
{{- define "lm.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "lm.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "lm.labels" -}}
{{ include "lm.selector" . }}
app.kubernetes.io/part-of: learning-machine
app.kubernetes.io/managed-by: {{ (index . 0).Release.Service }}
helm.sh/chart: {{ printf "%s-%s" (index . 0).Chart.Name (index . 0).Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* metadata: name, namespace, labels: (list $ component name-suffix) */}}
{{- define "lm.metadata" -}}
{{- $ := index . 0 -}}
name: {{ include "lm.fullname" $ }}-{{ index . 2 }}
namespace: {{ $.Release.Namespace }}
labels:
  {{- include "lm.labels" (list $ (index . 1)) | nindent 2 }}
{{- end -}}

{{/* The service entry (command, port, health_path, env) of files/services.json. */}}
{{- define "lm.service" -}}
{{- $services := .root.Files.Get "files/services.json" | fromJson -}}
{{- get $services .name | toJson -}}
{{- end -}}

{{- define "lm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for every pod and container. */}}
{{- define "lm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . | default 10001 }}
runAsGroup: {{ . | default 10001 }}
fsGroup: {{ . | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "lm.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod-level settings every pod shares. */}}
{{- define "lm.podDefaults" -}}
automountServiceAccountToken: false
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The writable /tmp of a read-only root filesystem (LM_HOME, matplotlib and MLflow temp files live there). */}}
{{- define "lm.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{- define "lm.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* -- addresses of the services ------------------------------------------------------------------ */}}
{{- define "lm.mlflowUrl" -}}
{{- printf "http://%s-mlflow.%s.svc.cluster.local:%v" (include "lm.fullname" .) .Release.Namespace .Values.mlflow.servicePort -}}
{{- end -}}

{{- define "lm.gatewayUrl" -}}
{{- printf "http://%s-gateway.%s.svc.cluster.local:%v" (include "lm.fullname" .) .Release.Namespace .Values.gateway.servicePort -}}
{{- end -}}

{{- define "lm.postgresHost" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "%s-postgresql.%s.svc.cluster.local" (include "lm.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "postgresql.external.host is required when postgresql.enabled is false" .Values.postgresql.external.host -}}
{{- end -}}
{{- end -}}

{{- define "lm.postgresPort" -}}
{{- if .Values.postgresql.enabled }}5432{{ else }}{{ .Values.postgresql.external.port }}{{ end -}}
{{- end -}}

{{- define "lm.s3Endpoint" -}}
{{- if .Values.s3.minio.enabled -}}
{{- printf "http://%s-minio.%s.svc.cluster.local:9000" (include "lm.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "s3.external.endpoint is required when s3.minio.enabled is false" .Values.s3.external.endpoint -}}
{{- end -}}
{{- end -}}

{{/* The Service Seldon creates for the model, its explainer or its drift detector ((list $ "model"|"explainer"|
"drift")): name and port from files/serving.json, which learning_machine.k8s.chart writes from the functions
that render the SeldonDeployments (a test checks it is current), so these URLs and the manifests agree. */}}
{{- define "lm.seldonServiceUrl" -}}
{{- $ := index . 0 -}}
{{- $service := get ($.Files.Get "files/serving.json" | fromJson) (index . 1) -}}
{{- printf "http://%s.%s.svc.cluster.local:%d" (replace "DEPLOYMENT" $.Values.model.name $service.service) $.Release.Namespace (int $service.port) -}}
{{- end -}}

{{- define "lm.modelServerUrl" -}}
{{- default (include "lm.seldonServiceUrl" (list . "model")) .Values.serving.modelServerUrl -}}
{{- end -}}

{{/* An explicit URL, else the model server when that is set (one server for all three, as in the embedded
setup), else the Seldon Service. */}}
{{- define "lm.explainerUrl" -}}
{{- .Values.serving.explainerUrl | default .Values.serving.modelServerUrl | default (include "lm.seldonServiceUrl" (list . "explainer")) -}}
{{- end -}}

{{- define "lm.driftDetectorUrl" -}}
{{- .Values.serving.driftDetectorUrl | default .Values.serving.modelServerUrl | default (include "lm.seldonServiceUrl" (list . "drift")) -}}
{{- end -}}

{{/* -- credentials: generated once, kept across upgrades, or read from existing Secrets -------------- */}}
{{/* One value of the generated Secret: the one already in the cluster, else a new random one (memoised,
so every template of one render sees the same value). */}}
{{- define "lm.generated" -}}
{{- $ := index . 0 -}}
{{- $key := index . 1 -}}
{{- $cache := $.Values._generated | default dict -}}
{{- if not (hasKey $cache $key) -}}
{{- $existing := lookup "v1" "Secret" $.Release.Namespace (printf "%s-generated" (include "lm.fullname" $)) -}}
{{- $value := "" -}}
{{- $data := ($existing.data | default dict) -}}
{{- if and (eq $key "monitor-token") (hasKey $data "tokens.json") -}}
{{- /* Stored inside tokens.json, not under its own key. Only under "monitor": a token of an older release
(under "data-scientist") is registered with that role, so the monitor gets a new one instead. */ -}}
{{- $value = get (index $data "tokens.json" | b64dec | fromJson) "monitor" | default "" -}}
{{- else if hasKey $data $key -}}
{{- $value = index $data $key | b64dec -}}
{{- end -}}
{{- if $value -}}
{{- else if eq $key "minio-root-user" -}}
{{- $value = printf "lm%s" (randAlphaNum 12 | lower) -}}
{{- else if eq $key "monitor-token" -}}
{{- $value = printf "lm_%s" (randAlphaNum 43) -}}
{{- else -}}
{{- $value = randAlphaNum 32 -}}
{{- end -}}
{{- $_ := set $cache $key $value -}}
{{- $_ := set $.Values "_generated" $cache -}}
{{- end -}}
{{- index $cache $key -}}
{{- end -}}

{{- define "lm.generatedSecret" -}}{{ include "lm.fullname" . }}-generated{{- end -}}

{{/* (Secret name, key) of the database password. */}}
{{- define "lm.dbPasswordRef" -}}
{{- if .Values.postgresql.existingSecret -}}
name: {{ .Values.postgresql.existingSecret }}
key: {{ .Values.postgresql.passwordKey }}
{{- else -}}
name: {{ include "lm.generatedSecret" . }}
key: postgresql-password
{{- end -}}
{{- end -}}

{{- define "lm.s3AccessKeyRef" -}}
{{- if .Values.s3.minio.enabled -}}
name: {{ include "lm.generatedSecret" . }}
key: minio-root-user
{{- else -}}
name: {{ .Values.s3.external.existingSecret }}
key: {{ .Values.s3.external.accessKeyKey }}
{{- end -}}
{{- end -}}

{{- define "lm.s3SecretKeyRef" -}}
{{- if .Values.s3.minio.enabled -}}
name: {{ include "lm.generatedSecret" . }}
key: minio-root-password
{{- else -}}
name: {{ .Values.s3.external.existingSecret }}
key: {{ .Values.s3.external.secretKeyKey }}
{{- end -}}
{{- end -}}

{{- define "lm.mlflowPasswordRef" -}}
{{- if .Values.mlflow.auth.existingSecret -}}
name: {{ .Values.mlflow.auth.existingSecret }}
key: password
{{- else -}}
name: {{ include "lm.generatedSecret" . }}
key: mlflow-admin-password
{{- end -}}
{{- end -}}

{{/* A database URL whose password Kubernetes expands from DATABASE_PASSWORD (declared before it). */}}
{{- define "lm.databaseUrl" -}}
{{- $ := index . 0 -}}
{{- printf "postgresql+psycopg://%s:$(DATABASE_PASSWORD)@%s:%s/%s" $.Values.postgresql.username (include "lm.postgresHost" $) (include "lm.postgresPort" $) (index . 1) -}}
{{- end -}}

{{/* -- env shared by containers ----------------------------------------------------------------------- */}}
{{- define "lm.dbEnv" -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "lm.dbPasswordRef" . | nindent 6 }}
{{- end -}}

{{- define "lm.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      {{- include "lm.s3AccessKeyRef" . | nindent 6 }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      {{- include "lm.s3SecretKeyRef" . | nindent 6 }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ include "lm.s3Endpoint" . | quote }}
{{- end -}}

{{/* Where an MLflow client finds the tracking server, with the admin credentials when basic-auth is on; and
the platform image it runs in (LM_IMAGE), which the change record of a version it trains names. */}}
{{- define "lm.trackingEnv" -}}
- name: LM_MLFLOW_TRACKING_URI
  value: {{ include "lm.mlflowUrl" . | quote }}
- name: LM_MODEL_NAME
  value: {{ .Values.model.name | quote }}
- name: LM_IMAGE
  value: {{ include "lm.image" . | quote }}
{{- if .Values.mlflow.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  value: {{ .Values.mlflow.auth.adminUsername | quote }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "lm.mlflowPasswordRef" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* What the seldon deployer needs (the gateway's admin promotions, the monitor's and the deploy Job). */}}
{{- define "lm.seldonEnv" -}}
- name: LM_DEPLOYER
  value: seldon
- name: LM_SELDON_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: LM_SERVING_IMAGE
  value: {{ .Values.serving.image | quote }}
- name: LM_SELDON_SECRET_NAME
  value: {{ include "lm.seldonSecret" . | quote }}
- name: LM_SELDON_TRACKING_URI
  value: {{ include "lm.mlflowUrl" . | quote }}
{{- end -}}

{{- define "lm.seldonSecret" -}}{{ include "lm.fullname" . }}-seldon-s3{{- end -}}

{{/* A container's probes on its HTTP health path: (dict "path" "port" "startup" seconds). */}}
{{- define "lm.probes" -}}
startupProbe:
  httpGet: {path: {{ .path }}, port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: {{ div (.startup | default 120) 5 }}
readinessProbe:
  httpGet: {path: {{ .path }}, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet: {path: {{ .path }}, port: {{ .port }}}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* Contradictory values stop the render with a message naming the keys. */}}
{{- define "lm.validate" -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.postgresql.external.host) -}}
{{- fail "postgresql.enabled=false needs postgresql.external.host (and postgresql.existingSecret)" -}}
{{- end -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.postgresql.existingSecret) -}}
{{- fail "an external PostgreSQL needs postgresql.existingSecret: the chart cannot generate its password" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled .Values.postgresql.external.host -}}
{{- fail "postgresql.external.host is set but postgresql.enabled is true: set postgresql.enabled=false to use it" -}}
{{- end -}}
{{- if and (not .Values.s3.minio.enabled) (or (not .Values.s3.external.endpoint) (not .Values.s3.external.existingSecret)) -}}
{{- fail "s3.minio.enabled=false needs s3.external.endpoint and s3.external.existingSecret" -}}
{{- end -}}
{{- if and .Values.s3.minio.enabled .Values.s3.external.endpoint -}}
{{- fail "s3.external.endpoint is set but s3.minio.enabled is true: set s3.minio.enabled=false to use it" -}}
{{- end -}}
{{- if and (not .Values.s3.minio.enabled) (or .Values.kfp.createCredentials .Values.serving.createSecret) -}}
{{- fail "with an external S3 the chart cannot copy its credentials: create the Secrets learning-machine-pipeline-credentials and the Seldon one yourself and set kfp.createCredentials=false and serving.createSecret=false" -}}
{{- end -}}
{{- if and .Values.mlflow.auth.enabled .Values.mlflow.auth.existingSecret .Values.kfp.createCredentials -}}
{{- fail "mlflow.auth.existingSecret with kfp.createCredentials=true: the chart cannot copy the admin password into learning-machine-pipeline-credentials; create that Secret yourself and set kfp.createCredentials=false" -}}
{{- end -}}
{{- if and .Values.gateway.autoscaling.enabled (lt (int .Values.gateway.autoscaling.maxReplicas) (int .Values.gateway.autoscaling.minReplicas)) -}}
{{- fail "gateway.autoscaling.maxReplicas must be at least minReplicas" -}}
{{- end -}}
{{- if and .Values.gateway.pdb.enabled (ge (int .Values.gateway.pdb.minAvailable) (int (ternary .Values.gateway.autoscaling.minReplicas .Values.gateway.replicas .Values.gateway.autoscaling.enabled))) -}}
{{- fail "gateway.pdb.minAvailable must be below the gateway's (minimum) replicas, or no node could ever be drained" -}}
{{- end -}}
{{- if and .Values.ingress.enabled .Values.ingress.mlflowHost (not .Values.mlflow.auth.enabled) -}}
{{- fail "ingress.mlflowHost exposes MLflow, which has no login unless mlflow.auth.enabled=true" -}}
{{- end -}}
{{- if and .Values.serving.deployOnInstall.enabled (not .Values.rbac.create) -}}
{{- fail "serving.deployOnInstall needs rbac.create=true (the Job patches SeldonDeployments)" -}}
{{- end -}}
{{- end -}}

{{/* The tail of every Job container: security, resources and the /tmp mount (more mounts may follow). */}}
{{- define "lm.jobContainer" -}}
securityContext:
  {{- include "lm.securityContext" . | nindent 2 }}
resources:
  requests: {cpu: 100m, memory: 256Mi}
  limits: {cpu: "1", memory: 1Gi}
volumeMounts:
  {{- include "lm.tmpMount" . | nindent 2 }}
{{- end -}}

{{- define "lm.platformDbEnv" -}}
{{ include "lm.dbEnv" . }}
- name: LM_DATABASE_URL
  value: {{ include "lm.databaseUrl" (list . .Values.postgresql.database) | quote }}
{{- end -}}

{{- define "lm.tokensVolume" -}}
- name: tokens
  secret:
    secretName: {{ include "lm.generatedSecret" . }}
    defaultMode: 0400
    items:
      - key: tokens.json
        path: tokens.json
{{- end -}}

{{/* The ServiceAccount token, mounted only where the Kubernetes API is used (the pods otherwise set
automountServiceAccountToken: false); the same files the in-cluster client config reads. */}}
{{- define "lm.saTokenVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                fieldPath: metadata.namespace
{{- end -}}

{{- define "lm.saTokenMount" -}}
- name: kube-api-access
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end -}}

{{/* The token a pod sends to the Kubeflow Pipelines API (kfp.client.ServiceAccountTokenVolumeCredentials):
the pod's ServiceAccount token projected for KFP's audience, at KFP's default path. */}}
{{- define "lm.kfpTokenPath" -}}
/var/run/secrets/kubeflow/pipelines/token
{{- end -}}

{{- define "lm.kfpTokenVolume" -}}
- name: kfp-token
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          audience: pipelines.kubeflow.org
          expirationSeconds: {{ .Values.kfp.serviceAccountToken.expirationSeconds }}
{{- end -}}

{{- define "lm.kfpTokenMount" -}}
- name: kfp-token
  mountPath: {{ include "lm.kfpTokenPath" . | dir }}
  readOnly: true
{{- end -}}

{{/* NetworkPolicy selectors: a component of this release, the Seldon pods (labelled by the operator with
their SeldonDeployment), or a named outside peer. */}}
{{- define "lm.npSelector" -}}
{{- $ := index . 0 -}}
{{- $name := index . 1 -}}
{{- if eq $name "@seldon" -}}
matchExpressions:
  - {key: seldon-deployment-id, operator: Exists}
{{- else -}}
matchLabels:
  app.kubernetes.io/instance: {{ $.Release.Name }}
  app.kubernetes.io/component: {{ $name }}
{{- end -}}
{{- end -}}

{{- define "lm.npPeer" -}}
{{- $ := index . 0 -}}
{{- $name := index . 1 -}}
{{- if eq $name "@ingress" -}}
- namespaceSelector:
    matchLabels:
      {{- toYaml $.Values.networkPolicy.ingressNamespaceSelector | nindent 6 }}
{{- else if eq $name "@pipelines" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ default $.Release.Namespace $.Values.kfp.pipelinesNamespace }}
  podSelector:
    matchLabels:
      {{- toYaml $.Values.networkPolicy.pipelinePodLabels | nindent 6 }}
{{- else if eq $name "@prometheus" -}}
- namespaceSelector:
    matchLabels:
      {{- toYaml $.Values.metrics.serviceMonitor.prometheusNamespaceSelector | nindent 6 }}
{{- else if eq $name "@kfp" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ $.Values.kfp.namespace }}
{{- else -}}
- podSelector:
    {{- include "lm.npSelector" (list $ $name) | nindent 4 }}
{{- end -}}
{{- end -}}

{{- define "lm.dnsPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: kube-system
  podSelector:
    matchLabels:
      k8s-app: kube-dns
{{- end -}}

{{/* checkov skips, each with its reason, as annotations on the object they apply to. */}}
{{- define "lm.checkovSkips" -}}
{{- $reasons := dict
  "CKV_K8S_43" "Images are pinned by version tag in values.yaml; a digest is the installer's per-registry choice (tag@sha256:... works in every image value)."
  "CKV_K8S_15" "Tags are immutable versions, so IfNotPresent is safe; Always would make every pod start depend on the registry being reachable."
  "CKV_K8S_35" "MLflow, PostgreSQL, MinIO, mc and the AWS/psycopg clients read credentials from environment variables only; every value comes from a secretKeyRef, none is literal."
  "CKV_K8S_40" "The official PostgreSQL Alpine image owns its data directory as uid 70 (postgres); another uid cannot initialise it."
  "CKV_K8S_8" "A one-shot test pod that exits; a liveness probe would only restart it."
  "CKV_K8S_9" "A one-shot test pod that exits; nothing routes traffic to it."
-}}
{{- $lines := list -}}
{{- range $i, $id := . -}}
{{- $lines = append $lines (printf "checkov.io/skip%d: %s" (add1 $i) (printf "%s=%s" $id (get $reasons $id) | quote)) -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{/* The egress rules of one policy: (dict "root" $ "to" (list (list peer port) ...)). */}}
{{- define "lm.npEgress" -}}
{{- $ := .root }}
{{- range .to }}
{{- $peer := index . 0 }}
{{- $port := index . 1 }}
{{- if eq $peer "@dns" }}
- to:
    {{- include "lm.dnsPeer" $ | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- else if eq $peer "@kubeapi" }}
- to:
    - ipBlock:
        cidr: {{ $.Values.networkPolicy.kubeApiCidr }}
  ports:
    {{- range $.Values.networkPolicy.kubeApiPorts }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- else if eq $peer "@s3" }}
{{- if not $.Values.s3.minio.enabled }}
# An external S3 endpoint: its address is not known here, only that it speaks HTTPS (or HTTP).
- ports:
    - {protocol: TCP, port: 443}
    - {protocol: TCP, port: 80}
{{- end }}
{{- else if eq $peer "" }}
{{- if and (eq $port 5432) (not $.Values.postgresql.enabled) }}
# An external PostgreSQL: its address is not known here, only its port.
- ports:
    - {protocol: TCP, port: {{ $.Values.postgresql.external.port }}}
{{- end }}
{{- else }}
- to:
    {{- include "lm.npPeer" (list $ $peer) | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ $port }}}
{{- end }}
{{- end }}
{{- end -}}
