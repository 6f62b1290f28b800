-- view: pair_strata
-- requires: pairs
-- key: pair_id
-- One row per pair: its stratum, discipline x figure_type (metadata.figure_type; blank or absent:
-- unknown), and how many pairs the stratum holds. score_fluency samples per stratum; the caption card
-- weighs a sampled pair by its stratum's size over the stratum's scored pairs.
CREATE OR REPLACE VIEW ${db}.pair_strata AS
SELECT pair_id, discipline, paper_id, figure_type,
       count(*) OVER (PARTITION BY discipline, figure_type) AS stratum_pairs
FROM (SELECT pair_id, discipline, paper_id,
             coalesce(nullif(trim(get_json_object(metadata_json, '$.figure_type')), ''), 'unknown') AS figure_type
      FROM ${db}.pairs)
