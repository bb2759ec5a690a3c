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

{{/* A bundled service's image (repository:tag). */}}
{{- define "handin.thirdPartyImage" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Secret holding the application secrets. */}}
{{- define "handin.appSecretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-app" (include "handin.fullname" .)) -}}
{{- end -}}

{{/*
A generated secret value that survives upgrades: reuse the key of the live
Secret when there is one, else a fresh random string.
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

{{- define "handin.postgresqlName" -}}{{ include "handin.fullname" . }}-postgresql{{- end -}}
{{- define "handin.redisName" -}}{{ include "handin.fullname" . }}-redis{{- end -}}
{{- define "handin.minioName" -}}{{ include "handin.fullname" . }}-minio{{- end -}}
{{- define "handin.clamavName" -}}{{ include "handin.fullname" . }}-clamav{{- end -}}

{{/* The public URL: publicUrl, else the first ingress host, else the api Service. */}}
{{- define "handin.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{- .Values.publicUrl -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts -}}
{{- printf "%s://%s" (ternary "https" "http" (gt (len .Values.ingress.tls) 0)) (first .Values.ingress.hosts) -}}
{{- else -}}
{{- printf "http://%s-api" (include "handin.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "handin.routerUrl" -}}
{{- if .Values.routerUrl -}}
{{- .Values.routerUrl -}}
{{- else -}}
{{- $public := include "handin.publicUrl" . -}}
{{- printf "%s/ws" ($public | replace "https://" "wss://" | replace "http://" "ws://" | trimSuffix "/") -}}
{{- end -}}
{{- end -}}

{{/* Pod-level settings every handin pod shares (the service account is set by each pod). */}}
{{- define "handin.podCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
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

{{/* Where the database URL comes from: the bundled PostgreSQL's Secret or an existing one. */}}
{{- define "handin.databaseSecretRef" -}}
{{- if .Values.postgresql.enabled -}}
name: {{ include "handin.postgresqlName" . }}
key: database-url
{{- else -}}
name: {{ required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret }}
key: {{ .Values.externalDatabase.urlKey }}
{{- end -}}
{{- end -}}

{{- define "handin.redisSecretRef" -}}
{{- if .Values.redis.enabled -}}
name: {{ include "handin.redisName" . }}
key: redis-url
{{- else -}}
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
- name: HANDIN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- include "handin.databaseSecretRef" . | nindent 6 }}
- name: HANDIN_REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- include "handin.redisSecretRef" . | nindent 6 }}
{{- if .Values.minio.enabled }}
- name: HANDIN_STORAGE__S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.minioName" . }}
      key: root-user
- name: HANDIN_STORAGE__S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "handin.minioName" . }}
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

{{/* A PersistentVolumeClaim, or an emptyDir when persistence is off; call with (dict "name" n "persistence" p). */}}
{{- define "handin.dataVolume" -}}
- name: data
  {{- if .persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .name }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end -}}

{{- define "handin.pvc" -}}
{{- if .persistence.enabled }}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ .name }}
  labels:
    {{- include "handin.labels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  accessModes: ["ReadWriteOnce"]
  {{- with .persistence.storageClass }}
  storageClassName: {{ . | quote }}
  {{- end }}
  resources:
    requests:
      storage: {{ .persistence.size }}
{{- end }}
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
A worker entry with its defaults filled in (autoscale true, one replica, 1..10).
hasKey, not `default`/`merge`: an explicit `autoscale: false` must stay false.
Call with a worker map; use as: include "handin.worker" $raw | fromYaml
*/}}
{{- define "handin.worker" -}}
{{- $worker := deepCopy . -}}
{{- range $key, $value := dict "autoscale" true "replicas" 1 "minReplicas" 1 "maxReplicas" 10 -}}
{{- if not (hasKey $worker $key) -}}
{{- $_ := set $worker $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $worker -}}
{{- end -}}
