{{/* The chart's name, overridable. */}}
{{- define "headroom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: the release name, unless it already holds the chart name. */}}
{{- define "headroom.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "headroom.scaler.fullname" -}}{{ include "headroom.fullname" . }}-scaler{{- end -}}
{{- define "headroom.provisioner.fullname" -}}{{ include "headroom.fullname" . }}-provisioner{{- end -}}

{{/* Labels of every object. */}}
{{- define "headroom.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "headroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: headroom
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: pass (dict "ctx" $ "component" "scaler"). */}}
{{- define "headroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "headroom.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "headroom.componentLabels" -}}
{{ include "headroom.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "headroom.scaler.serviceAccountName" -}}
{{- if .Values.scaler.serviceAccount.create -}}
{{- default (include "headroom.scaler.fullname" .) .Values.scaler.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.scaler.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "headroom.provisioner.serviceAccountName" -}}
{{- if .Values.provisioner.serviceAccount.create -}}
{{- default (include "headroom.provisioner.fullname" .) .Values.provisioner.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.provisioner.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest: pass (dict "image" .Values.x.image "ctx" $). */}}
{{- define "headroom.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* A soft spread over nodes unless the values give constraints: pass (dict "ctx" $ "component" "scaler" "values" .Values.scaler). */}}
{{- define "headroom.topologySpread" -}}
{{- if .values.topologySpreadConstraints }}
{{ toYaml .values.topologySpreadConstraints }}
{{- else }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "headroom.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* Go duration-like value to whole seconds + 5, for terminationGracePeriodSeconds. */}}
{{- define "headroom.graceSeconds" -}}
{{- $d := . | toString -}}
{{- $n := 10 -}}
{{- if hasSuffix "ms" $d -}}{{- $n = 1 -}}
{{- else if hasSuffix "m" $d -}}{{- $n = mul (trimSuffix "m" $d | atoi) 60 -}}
{{- else if hasSuffix "s" $d -}}{{- $n = trimSuffix "s" $d | atoi -}}
{{- end -}}
{{- add $n 5 -}}
{{- end -}}
