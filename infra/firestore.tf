# Firestore (native mode): approvals and the session index. The composite
# indexes come from firestore.indexes.json (the format of the Firebase CLI),
# the one list that code and tests read too.

locals {
  firestore_indexes = {
    for idx in jsondecode(file("${path.module}/firestore.indexes.json")).indexes :
    join("/", concat([idx.collectionGroup], [for f in idx.fields : "${f.fieldPath}:${f.order}"])) => idx
  }
}

resource "google_firestore_database" "jitgate" {
  name                              = var.firestore_database
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  deletion_policy                   = "ABANDON"

  depends_on = [google_project_service.apis]
}

resource "google_firestore_index" "composite" {
  for_each = local.firestore_indexes

  database    = google_firestore_database.jitgate.name
  collection  = each.value.collectionGroup
  query_scope = each.value.queryScope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.fieldPath
      order      = fields.value.order
    }
  }
}
