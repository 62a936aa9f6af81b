{{/* The full name of the release's objects. */}}
{{- define "ksc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "kserve-canary" .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ksc.selectorLabels" -}}
app.kubernetes.io/name: {{ default "kserve-canary" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ksc.labels" -}}
{{ include "ksc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ksc.serviceAccountName" -}}
{{- default (include "ksc.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "ksc.webhookService" -}}{{ include "ksc.fullname" . }}-webhook{{- end -}}
{{- define "ksc.apiService" -}}{{ include "ksc.fullname" . }}{{- end -}}
{{- define "ksc.certificate" -}}{{ include "ksc.fullname" . }}-serving{{- end -}}

{{/* The Secret holding tls.crt, tls.key (and ca.crt with cert-manager). */}}
{{- define "ksc.tlsSecret" -}}
{{- if eq .Values.tls.source "secret" -}}
{{- .Values.tls.secret.name -}}
{{- else -}}
{{- include "ksc.fullname" . }}-tls
{{- end -}}
{{- end -}}

{{- define "ksc.policyConfigMap" -}}
{{- default (printf "%s-policies" (include "ksc.fullname" .)) .Values.policies.existingConfigMap -}}
{{- end -}}

{{/* The Secret with the database URL: the chart's own when database.url is set. */}}
{{- define "ksc.databaseSecret" -}}
{{- if .Values.database.url -}}
{{- printf "%s-database" (include "ksc.fullname" .) -}}
{{- else -}}
{{- .Values.database.existingSecret.name -}}
{{- end -}}
{{- end -}}

{{/* The serving CA as a ConfigMap (key ca.crt), made from tls.caBundle with tls.source secret. */}}
{{- define "ksc.servingCaConfigMap" -}}{{ include "ksc.fullname" . }}-serving-ca{{- end -}}

{{/* The ConfigMap the webhook route's BackendTLSPolicy verifies the controller with. */}}
{{- define "ksc.backendCaConfigMap" -}}
{{- default (include "ksc.servingCaConfigMap" .) .Values.webhookRoute.httpRoute.backendTLSPolicy.caConfigMap -}}
{{- end -}}

{{/* Whether the chart makes the serving CA ConfigMap: for the ServiceMonitor, or for the
BackendTLSPolicy when no ConfigMap of your own is named. */}}
{{- define "ksc.needsServingCaConfigMap" -}}
{{- $btls := .Values.webhookRoute.httpRoute.backendTLSPolicy -}}
{{- if eq .Values.tls.source "secret" -}}
{{- if or .Values.serviceMonitor.enabled (and .Values.webhookRoute.httpRoute.enabled $btls.enabled (not $btls.caConfigMap)) -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The shadow collector's objects: their own name label, so that none of the controller's
selectors (Services, PodDisruptionBudget, Deployment, ServiceMonitor) takes its pod. The
full name is cut to 46 characters so that the Service's name stays a 63-character label. */}}
{{- define "ksc.collectorName" -}}
{{- printf "%s-shadow-collector" (include "ksc.fullname" . | trunc 46 | trimSuffix "-") -}}
{{- end -}}

{{- define "ksc.collectorSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-shadow-collector" (default "kserve-canary" .Values.nameOverride | trunc 46 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ksc.collectorLabels" -}}
{{ include "ksc.collectorSelectorLabels" . }}
app.kubernetes.io/component: shadow-collector
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The one port of the collector (setting shadow_collector_port): fixed, since it is part of
the logger URL put on every compared InferenceService. */}}
{{- define "ksc.collectorPort" -}}9400{{- end -}}

{{/* "true" when a label selector (a dict, or nothing) selects everything. */}}
{{- define "ksc.selectsAll" -}}
{{- if not . -}}
true
{{- else if and (empty (get . "matchLabels")) (empty (get . "matchExpressions")) -}}
true
{{- end -}}
{{- end -}}

{{- define "ksc.sqliteClaim" -}}{{ include "ksc.fullname" . }}-sqlite{{- end -}}

{{- define "ksc.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Checks across values that the schema does not express; each failure says what to change.
Included by the Deployment, so `helm template` and `helm install` run them (`helm lint`
only logs a template's `fail`, as Helm's lint mode does for every chart).
*/}}
{{- define "ksc.validate" -}}
{{- if and (eq .Values.database.type "sqlite") (ne (int .Values.replicas) 1) -}}
{{- fail (printf "database.type sqlite keeps the audit database in a file on one volume, so it needs replicas: 1 (got replicas: %d); use database.type postgresql for more replicas" (int .Values.replicas)) -}}
{{- end -}}
{{- if and (eq .Values.database.type "postgresql") (not .Values.database.existingSecret.name) (not .Values.database.url) -}}
{{- fail "database.type postgresql needs the database URL: set database.existingSecret.name (and .key) to a Secret holding it, or database.url (evaluation only: the chart then creates the Secret)" -}}
{{- end -}}
{{- if and .Values.migration.appRole (not .Values.migration.ownerSecret.name) -}}
{{- fail "migration.appRole needs migration.ownerSecret.name: a Secret with the URL of the role that owns the tables; `canary db grant` runs as the owner, for the controller's application role" -}}
{{- end -}}
{{- if and (or .Values.migration.appRole .Values.migration.ownerSecret.name) (ne .Values.database.type "postgresql") -}}
{{- fail "migration.ownerSecret and migration.appRole are for database.type postgresql: SQLite has no roles" -}}
{{- end -}}
{{- if and (eq .Values.tls.source "secret") (not .Values.tls.secret.name) -}}
{{- fail "tls.source secret needs tls.secret.name: a kubernetes.io/tls Secret with tls.crt and tls.key in the release namespace (or use tls.source cert-manager)" -}}
{{- end -}}
{{- if and (eq .Values.tls.source "secret") (not .Values.tls.caBundle) -}}
{{- fail "tls.source secret needs tls.caBundle: the PEM of the CA that signed the certificate in tls.secret.name (the apiserver verifies the webhook with it)" -}}
{{- end -}}
{{- if and (eq .Values.tls.source "secret") .Values.tls.caBundle (not (contains "-----BEGIN CERTIFICATE-----" .Values.tls.caBundle)) -}}
{{- fail "tls.caBundle must be the CA's PEM (-----BEGIN CERTIFICATE----- …), not base64 of it" -}}
{{- end -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) -}}
{{- fail "rbac.scope namespaced needs watchNamespaces: the namespaces to grant access in and to watch" -}}
{{- end -}}
{{- $sn := .Values.servicenow -}}
{{- if and $sn.url (not $sn.existingSecret) -}}
{{- $keys := dict "basic" "user and password" "oauth-password" "user, password, clientId and clientSecret" "oauth-client-credentials" "clientId and clientSecret" -}}
{{- fail (printf "servicenow.url needs servicenow.existingSecret: the name of a Secret in the release namespace with the keys %s (servicenow.auth %s)" (get $keys $sn.auth) $sn.auth) -}}
{{- end -}}
{{- $route := .Values.webhookRoute -}}
{{- if and $route.ingress.enabled (not $route.ingress.host) -}}
{{- fail "webhookRoute.ingress.enabled needs webhookRoute.ingress.host: the public host name the approval webhooks are posted to" -}}
{{- end -}}
{{- if and $route.httpRoute.enabled (empty $route.httpRoute.parentRefs) -}}
{{- fail "webhookRoute.httpRoute.enabled needs webhookRoute.httpRoute.parentRefs: the Gateway listener(s) the route attaches to" -}}
{{- end -}}
{{- if and (or $route.ingress.enabled $route.httpRoute.enabled) (not .Values.approvals.callbackSecretsSecret) (not .Values.approvals.webhookSecretsSecret) -}}
{{- fail "webhookRoute exposes /webhooks/v1/, but no secret would verify a delivery: set approvals.callbackSecretsSecret (ServiceNow's callback) or approvals.webhookSecretsSecret (the generic approval webhook), or both" -}}
{{- end -}}
{{- if and $route.httpRoute.enabled $route.httpRoute.backendTLSPolicy.enabled (eq .Values.tls.source "cert-manager") (not $route.httpRoute.backendTLSPolicy.caConfigMap) -}}
{{- fail "webhookRoute.httpRoute.backendTLSPolicy needs caConfigMap with tls.source cert-manager: a ConfigMap in the release namespace whose key ca.crt is the serving CA (for example one trust-manager fills from the CA), or set backendTLSPolicy.enabled false if your Gateway is told about backend TLS its own way" -}}
{{- end -}}
{{- $sc := .Values.shadowCollector -}}
{{- if and $sc.enabled (eq $sc.decisionField $sc.scoreField) -}}
{{- fail (printf "shadowCollector.decisionField and shadowCollector.scoreField are both %q: a response's decision and score are read from different fields" $sc.decisionField) -}}
{{- end -}}
{{- if $sc.enabled -}}
{{- range $list := list "allowFrom" "prometheusFrom" -}}
{{- range $i, $peer := get $sc $list -}}
{{- if and (hasKey $peer "namespaceSelector") (include "ksc.selectsAll" $peer.namespaceSelector) (include "ksc.selectsAll" (get $peer "podSelector")) -}}
{{- $hint := ternary "component: predictor" "app.kubernetes.io/name: prometheus" (eq $list "allowFrom") -}}
{{- fail (printf "shadowCollector.%s[%d] admits every pod of every namespace, and anyone who can post to the collector can invent pairs: give it a podSelector (e.g. matchLabels %s) or a namespaceSelector with labels" $list $i $hint) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not (lt "inferenceservice.serving.kserve.io" .Values.webhook.configurationName) -}}
{{- fail (printf "webhook.configurationName %q must sort after KServe's inferenceservice.serving.kserve.io: the apiserver calls mutating webhooks in name order" .Values.webhook.configurationName) -}}
{{- end -}}
{{- end -}}
