// carnet driven by fhir-kit-client (npm): a search paged through its `next` links, then a read.
// Input (environment): CARNET_FHIR (the base URL), CARNET_HEADERS (JSON: the session cookie and
// CSRF header), CARNET_PATIENT (the patient whose Observations are searched).
// Output (stdout, one JSON line): what the client saw, for the Python test to check.
import { Client } from 'fhir-kit-client';

const client = new Client({
  baseUrl: process.env.CARNET_FHIR,
  customHeaders: JSON.parse(process.env.CARNET_HEADERS),
});
const patient = process.env.CARNET_PATIENT;

const pages = [];
let bundle = await client.search({
  resourceType: 'Observation',
  searchParams: { patient, _count: 2, _sort: 'date' },
});
pages.push(bundle);
while (bundle.link?.some((l) => l.relation === 'next') && pages.length < 10) {
  bundle = await client.nextPage({ bundle });
  pages.push(bundle);
}
const observations = pages.flatMap((p) => (p.entry ?? []).map((e) => e.resource));
const read = await client.read({ resourceType: 'Patient', id: patient });
const counted = await client.search({
  resourceType: 'Observation',
  searchParams: { patient, _summary: 'count' },
});
console.log(
  JSON.stringify({
    pages: pages.length,
    total: pages[0].total,
    ids: observations.map((o) => o.id),
    dates: observations.map((o) => o.effectiveDateTime),
    patient: { resourceType: read.resourceType, id: read.id },
    counted: counted.total,
  }),
);
