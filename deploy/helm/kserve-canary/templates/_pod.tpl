{{/* The restricted Pod Security profile, shared by the controller and the migration Job. */}}
{{- define "ksc.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ksc.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* KSC_DATABASE_URL, from the Secret or the SQLite file. */}}
{{- define "ksc.databaseEnv" -}}
{{- if eq .Values.database.type "sqlite" }}
- name: KSC_DATABASE_URL
  value: sqlite:////var/lib/kserve-canary/audit.db
{{- else }}
- name: KSC_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ksc.databaseSecret" . }}
      key: {{ .Values.database.existingSecret.key }}
{{- end }}
{{- end -}}

{{/* The migration Job's database URL: the owner role's with migration.ownerSecret. */}}
{{- define "ksc.migrationDatabaseEnv" -}}
{{- if .Values.migration.ownerSecret.name }}
- name: KSC_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.migration.ownerSecret.name }}
      key: {{ .Values.migration.ownerSecret.key }}
{{- else }}
{{- include "ksc.databaseEnv" . }}
{{- end }}
{{- end -}}

{{/* A container of the migration Job, but its name and command. */}}
{{- define "ksc.migrationContainer" -}}
image: {{ include "ksc.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
env:
  {{- include "ksc.migrationDatabaseEnv" . | trim | nindent 2 }}
resources:
  {{- toYaml .Values.migration.resources | nindent 2 }}
securityContext:
  {{- include "ksc.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- include "ksc.databaseVolumeMount" . | nindent 2 }}
{{- end -}}

{{- define "ksc.databaseVolumeMount" -}}
{{- if eq .Values.database.type "sqlite" }}
- name: sqlite
  mountPath: /var/lib/kserve-canary
{{- end }}
{{- end -}}

{{- define "ksc.databaseVolume" -}}
{{- if eq .Values.database.type "sqlite" }}
- name: sqlite
  persistentVolumeClaim:
    claimName: {{ include "ksc.sqliteClaim" . }}
{{- end }}
{{- end -}}

{{/* The approval gates' settings; every credential and secret through a secretKeyRef. */}}
{{- define "ksc.approvalsEnv" -}}
{{- $sn := .Values.servicenow -}}
{{- $a := .Values.approvals -}}
- name: KSC_APPROVAL_POLL_SECONDS
  value: {{ $a.pollSeconds | toString | quote }}
{{- if $sn.url }}
- name: KSC_SERVICENOW_URL
  value: {{ $sn.url | quote }}
- name: KSC_SERVICENOW_AUTH
  value: {{ $sn.auth | quote }}
- name: KSC_SERVICENOW_API
  value: {{ $sn.api | quote }}
{{- $keys := dict "basic" (list "user" "password") "oauth-password" (list "user" "password" "clientId" "clientSecret") "oauth-client-credentials" (list "clientId" "clientSecret") -}}
{{- $names := dict "user" "KSC_SERVICENOW_USER" "password" "KSC_SERVICENOW_PASSWORD" "clientId" "KSC_SERVICENOW_CLIENT_ID" "clientSecret" "KSC_SERVICENOW_CLIENT_SECRET" -}}
{{- range $key := get $keys $sn.auth }}
- name: {{ get $names $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $sn.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- with $a.callbackSecretsSecret }}
- name: KSC_SERVICENOW_CALLBACK_SECRETS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: secrets
{{- end }}
{{- with $a.webhookSecretsSecret }}
- name: KSC_APPROVAL_WEBHOOK_SECRETS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: secrets
{{- end }}
{{- end -}}
