{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "handin.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name for every object. */}}
{{- define "handin.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "handin.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; call with (dict "root" $ "component" "api"). */}}
{{- define "handin.selectorLabels" -}}
app.kubernetes.io/name: {{ include "handin.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Standard labels; call with (dict "root" $ "component" "api"). */}}
{{- define "handin.labels" -}}
helm.sh/chart: {{ include "handin.chart" .root }}
{{ include "handin.selectorLabels" . }}
app.kubernetes.io/part-of: handin
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Name of a worker Deployment: <fullname>-worker-<task>; the autoscaler's deployment prefix matches. */}}
{{- define "handin.workerName" -}}
{{- printf "%s-worker-%s" (include "handin.fullname" .root) .task -}}
{{- end -}}

{{- define "handin.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "handin.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference; call with (dict "root" $ "image" .Values.api.image). */}}
{{- define "handin.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if $registry }}{{ $registry }}/{{ end }}{{ .image.repository }}:{{ $tag }}{{ with .image.digest }}@{{ . }}{{ end }}
{{- end -}}

{{/* A bundled service's image: repository:tag, pinned with @digest when one is given. */}}
{{- define "handin.thirdPartyImage" -}}
{{- printf "%s:%s" .repository .tag -}}{{ with .digest }}@{{ . }}{{ end }}
{{- end -}}

{{/* Secret holding the application secrets. */}}
{{- define "handin.appSecretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-app" (include "handin.fullname" .)) -}}
{{- end -}}

{{/*
A generated secret value that survives upgrades: reuse the key of the live
Secret when there is one, else a fresh random string. `lookup` sees nothing
under `helm template` or --dry-run, so GitOps renders get a new value each
time: they must use existingSecret (docs/deploying.md).
Call with (dict "root" $ "secret" "<name>" "key" "<key>").
*/}}
{{- define "handin.generatedSecret" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}

{{/*
The receipt signing keys (HANDIN_RECEIPTS__SIGNING_KEYS, JSON): the live
Secret's when there is one, else a new Ed25519 key (PKCS#8 PEM) valid from
now. Like handin.generatedSecret, `helm template` and GitOps renders make a
new key each time: they must use existingSecret (docs/deploying.md).
Call with (dict "root" $ "secret" "<name>" "key" "<key>").
*/}}
{{- define "handin.generatedReceiptKeys" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- $now := now -}}
{{- list (dict "id" (printf "chart-%s" (dateInZone "20060102150405" $now "UTC")) "private_key" (genPrivateKey "ed25519") "valid_from" (dateInZone "2006-01-02T15:04:05Z" $now "UTC")) | toJson -}}
{{- end -}}
{{- end -}}

{{- define "handin.postgresqlName" -}}{{ include "handin.fullname" . }}-postgresql{{- end -}}
{{- define "handin.redisName" -}}{{ include "handin.fullname" . }}-redis{{- end -}}
{{- define "handin.minioName" -}}{{ include "handin.fullname" . }}-minio{{- end -}}
{{- define "handin.clamavName" -}}{{ include "handin.fullname" . }}-clamav{{- end -}}

{{/*
The public URL: publicUrl; else the first ingress host, https:// with ingress.tls
or in production (whose TLS may end in front of the Ingress), http:// otherwise;
else, in development, the api Service. Production refuses anything but https://
(core/settings.py), so the chart refuses to render it.
*/}}
{{- define "handin.publicUrl" -}}
{{- $production := eq .Values.environment "production" -}}
{{- $url := "" -}}
{{- if .Values.publicUrl -}}
{{- $url = .Values.publicUrl -}}
{{- else if and (or .Values.ingress.enabled $production) .Values.ingress.hosts -}}
{{- $url = printf "%s://%s" (ternary "https" "http" (or $production (gt (len .Values.ingress.tls) 0))) (first .Values.ingress.hosts) -}}
{{- else if not $production -}}
{{- $url = printf "http://%s-api" (include "handin.fullname" .) -}}
{{- end -}}
{{- if and $production (not (hasPrefix "https://" $url)) -}}
{{- fail (printf "environment production needs an https:// public URL (publicUrl, or an ingress host), not %q; for a trial over plain http set environment: development" $url) -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{/* scheme://host[:port] of a URL, lower case; call with the URL. */}}
{{- define "handin.origin" -}}
{{- $parts := urlParse . -}}
{{- printf "%s://%s" $parts.scheme $parts.host | lower -}}
{{- end -}}

{{/*
HANDIN_ROUTER__ALLOWED_ORIGINS as JSON: the public URL's origin, each ingress
host's (https:// with TLS or in production), and router.allowedOrigins.
*/}}
{{- define "handin.allowedOrigins" -}}
{{- $origins := list (include "handin.origin" (include "handin.publicUrl" .)) -}}
{{- if .Values.ingress.enabled -}}
{{- $scheme := ternary "https" "http" (or (eq .Values.environment "production") (gt (len .Values.ingress.tls) 0)) -}}
{{- range .Values.ingress.hosts -}}
{{- $origins = append $origins (printf "%s://%s" $scheme . | lower) -}}
{{- end -}}
{{- end -}}
{{- range .Values.router.allowedOrigins -}}
{{- $origins = append $origins (include "handin.origin" .) -}}
{{- end -}}
{{- $origins | uniq | toJson -}}
{{- end -}}

{{/*
The router URL: routerUrl, else <public URL>/ws (the Ingress routes /ws to the
router); with neither publicUrl nor an Ingress, the router Service itself,
never the api's.
*/}}
{{- define "handin.routerUrl" -}}
{{- if .Values.routerUrl -}}
{{- .Values.routerUrl -}}
{{- else if and (not .Values.publicUrl) (not (and .Values.ingress.enabled .Values.ingress.hosts)) -}}
{{- printf "ws://%s-router:%d/ws" (include "handin.fullname" .) (int .Values.router.service.port) -}}
{{- else -}}
{{- $public := include "handin.publicUrl" . -}}
{{- printf "%s/ws" ($public | replace "https://" "wss://" | replace "http://" "ws://" | trimSuffix "/") -}}
{{- end -}}
{{- end -}}

{{/*
Pod-level settings every handin pod shares (the service account is set by each pod).
Call with (dict "root" $ "component" "api" "values" .Values.api [ "spread" true ]).
*/}}
{{- define "handin.podCommon" -}}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{ include "handin.podScheduling" . }}
{{- end -}}

{{/*
Where a pod may run: imagePullSecrets, and the component's own nodeSelector,
tolerations and affinity (each falling back to the global value), plus a
topology spread over nodes and zones for the scaled-out components
(`spread`), unless the component names its own topologySpreadConstraints.
Same call as handin.podCommon; renders nothing when nothing is set.
*/}}
{{- define "handin.podScheduling" -}}
{{- $root := .root -}}
{{- $values := .values | default dict -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($values.nodeSelector | default $root.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($values.tolerations | default $root.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($values.affinity | default $root.Values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml $values.topologySpreadConstraints | nindent 2 }}
{{- else if and .spread $root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range $root.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "handin.selectorLabels" (dict "root" $root "component" $.component) | nindent 8 }}
    # Only this rollout's pods: old and new ReplicaSets are spread each on their own.
    matchLabelKeys: ["pod-template-hash"]
  {{- end }}
{{- end }}
{{- end -}}

{{/* Writable scratch for a read-only root filesystem: /tmp and the app's var/. */}}
{{- define "handin.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: var
  emptyDir:
    sizeLimit: {{ .sizeLimit | default "1Gi" }}
{{- end -}}

{{- define "handin.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: var
  mountPath: /app/var
{{- end -}}

{{/* The Secret holding a bundled service's password(s): its existingSecret, else the chart's own. */}}
{{- define "handin.postgresqlSecret" -}}{{ .Values.postgresql.existingSecret | default (include "handin.postgresqlName" .) }}{{- end -}}
{{- define "handin.redisSecret" -}}{{ .Values.redis.existingSecret | default (include "handin.redisName" .) }}{{- end -}}
{{- define "handin.minioSecret" -}}{{ .Values.minio.existingSecret | default (include "handin.minioName" .) }}{{- end -}}

{{/*
HANDIN_DATABASE_URL. A bundled PostgreSQL's URL carries no password: asyncpg
reads PGPASSWORD, taken from the Secret, so the URL never has to be rebuilt
from a password the chart may not know (existingSecret, `helm template`).
*/}}
{{- define "handin.databaseEnv" -}}
{{- if .Values.postgresql.enabled -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.postgresqlSecret" . }}
      key: password
- name: HANDIN_DATABASE_URL
  value: {{ printf "postgresql+asyncpg://%s@%s:5432/%s" .Values.postgresql.username (include "handin.postgresqlName" .) .Values.postgresql.database | quote }}
{{- else -}}
- name: HANDIN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.urlKey }}
{{- end -}}
{{- end -}}

{{/*
HANDIN_REDIS_URL. A bundled Redis's URL is composed by the kubelet from
REDIS_PASSWORD ($(VAR) expansion), so an existingSecret needs only `password`
(URL-safe characters).
*/}}
{{- define "handin.redisEnv" -}}
{{- if .Values.redis.enabled -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.redisSecret" . }}
      key: password
- name: HANDIN_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "handin.redisName" .) | quote }}
{{- else -}}
- name: HANDIN_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "externalRedis.existingSecret is required when redis.enabled is false" .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.urlKey }}
{{- end -}}
{{- end -}}

{{/*
Environment of every handin container: the ConfigMap, then the secrets.
Call with the root context.
*/}}
{{- define "handin.envFrom" -}}
- configMapRef:
    name: {{ include "handin.fullname" . }}-config
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "handin.env" -}}
- name: HANDIN_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.appSecretName" . }}
      key: {{ .Values.secrets.secretKeyKey }}
- name: HANDIN_ADMIN__SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.appSecretName" . }}
      key: {{ .Values.secrets.adminSecretKey }}
- name: HANDIN_SIMILARITY__WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.appSecretName" . }}
      key: {{ .Values.secrets.similarityWebhookSecretKey }}
- name: HANDIN_SIMILARITY__EXTERNAL_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.appSecretName" . }}
      key: {{ .Values.secrets.similarityApiKeyKey }}
      optional: true
{{ include "handin.databaseEnv" . }}
{{ include "handin.redisEnv" . }}
{{- if .Values.minio.enabled }}
- name: HANDIN_STORAGE__S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.minioSecret" . }}
      key: root-user
- name: HANDIN_STORAGE__S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.minioSecret" . }}
      key: root-password
{{- else if .Values.objectStore.existingSecret }}
- name: HANDIN_STORAGE__S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.existingSecret }}
      key: {{ .Values.objectStore.accessKeyIdKey }}
- name: HANDIN_STORAGE__S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.existingSecret }}
      key: {{ .Values.objectStore.secretAccessKeyKey }}
{{- end }}
{{- if .Values.smtp.existingSecret }}
- name: HANDIN_SMTP__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.smtp.existingSecret }}
      key: {{ .Values.smtp.passwordKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* HANDIN_RECEIPTS__SIGNING_KEYS, for the processes that sign receipts (the api, the receipt worker, the demo Job). */}}
{{- define "handin.receiptEnv" -}}
- name: HANDIN_RECEIPTS__SIGNING_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.appSecretName" . }}
      key: {{ .Values.secrets.receiptSigningKeysKey }}
{{- end -}}

{{/*
HANDIN_ADMIN__INBOUND_SECRET, for the api only: from adminSystem.existingSecret
(required there), else from the app Secret if it holds the key (optional: the
inbound endpoint answers 503 without it).
*/}}
{{- define "handin.adminInboundEnv" -}}
- name: HANDIN_ADMIN__INBOUND_SECRET
  valueFrom:
    secretKeyRef:
      {{- if .Values.adminSystem.existingSecret }}
      name: {{ .Values.adminSystem.existingSecret }}
      key: {{ .Values.adminSystem.inboundSecretKey }}
      {{- else }}
      name: {{ include "handin.appSecretName" . }}
      key: {{ .Values.adminSystem.inboundSecretKey }}
      optional: true
      {{- end }}
{{- end -}}

{{/* checksum annotation so pods restart when the shared configuration changes. */}}
{{- define "handin.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* HTTP probes on a named port; call with (dict "port" "http" "live" "/healthz" "ready" "/readyz"). */}}
{{- define "handin.httpProbes" -}}
livenessProbe:
  httpGet:
    path: {{ .live }}
    port: {{ .port }}
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: {{ .ready }}
    port: {{ .port }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
startupProbe:
  httpGet:
    path: {{ .live }}
    port: {{ .port }}
  periodSeconds: 2
  timeoutSeconds: 3
  failureThreshold: 60
{{- end -}}

{{/*
The data volume of a bundled service's StatefulSet: a volumeClaimTemplate
(its PVC data-<name>-0 is not part of the release, so `helm uninstall` keeps
it and a reinstall finds the data again), or an emptyDir when persistence is
off. Call with (dict "root" $ "component" c "persistence" p); the two parts
go under spec (claims) and the pod's volumes (emptyDir).
*/}}
{{- define "handin.dataClaims" -}}
{{- if .persistence.enabled -}}
persistentVolumeClaimRetentionPolicy:
  whenDeleted: Retain
  whenScaled: Retain
volumeClaimTemplates:
  - metadata:
      name: data
      labels:
        {{- include "handin.labels" (dict "root" .root "component" .component) | nindent 8 }}
    spec:
      accessModes: ["ReadWriteOnce"]
      {{- with .persistence.storageClass }}
      storageClassName: {{ . | quote }}
      {{- end }}
      resources:
        requests:
          storage: {{ .persistence.size }}
{{- end -}}
{{- end -}}

{{- define "handin.dataVolume" -}}
{{- if not .persistence.enabled -}}
- name: data
  emptyDir: {}
{{- end -}}
{{- end -}}

{{/* A ClusterIP Service for a bundled backing service. */}}
{{- define "handin.backingService" }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  labels:
    {{- include "handin.labels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "handin.selectorLabels" (dict "root" .root "component" .component) | nindent 4 }}
  ports:
    {{- range $portName, $port := .ports }}
    - name: {{ $portName }}
      port: {{ $port }}
      targetPort: {{ $portName }}
      protocol: TCP
    {{- end }}
{{- end -}}

{{/* Pod and container security for bundled services, which run as their image's own non-root user. */}}
{{- define "handin.backingPodSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .uid }}
  runAsGroup: {{ .gid }}
  fsGroup: {{ .gid }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/*
A worker entry with its defaults filled in (one replica, 1..10, a 120 s time
limit) and its effective `scaling`:
  autoscaler  the chart's autoscaler owns replicas (only when autoscaler.enabled; else fixed)
  external    an HPA, KEDA or a person owns replicas: no `replicas:`, the autoscaler keeps off
  fixed       `replicas:` from values, reset by every upgrade
The older boolean `autoscale` still maps to autoscaler/fixed when `scaling` is unset.
hasKey, not `default`/`merge`: an explicit false or 0 must stay.
Call with (dict "root" $ "worker" $raw); use as: include "handin.worker" (...) | fromYaml
*/}}
{{- define "handin.worker" -}}
{{- $worker := deepCopy .worker -}}
{{- range $key, $value := dict "replicas" 1 "minReplicas" 1 "maxReplicas" 10 "timeLimitSeconds" 120 -}}
{{- if not (hasKey $worker $key) -}}
{{- $_ := set $worker $key $value -}}
{{- end -}}
{{- end -}}
{{- if hasKey $worker "scaling" -}}
{{- else if and (hasKey $worker "autoscale") (not $worker.autoscale) -}}
{{- $_ := set $worker "scaling" "fixed" -}}
{{- else -}}
{{- $_ := set $worker "scaling" "autoscaler" -}}
{{- end -}}
{{- if and (eq $worker.scaling "autoscaler") (not .root.Values.autoscaler.enabled) -}}
{{- $_ := set $worker "scaling" "fixed" -}}
{{- end -}}
{{- $_ := unset $worker "autoscale" -}}
{{- toYaml $worker -}}
{{- end -}}
