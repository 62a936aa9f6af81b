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
